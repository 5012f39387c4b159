"""Unit tests of ``benchmarks/reliability.py``'s pure parts (the benchmark itself is run by hand)."""

from __future__ import annotations

import pytest
from benchmark_modules import load_benchmark

rb = load_benchmark("reliability.py", "reliability_bench")


def _steady(start: float, stop: float, sec: float, code: str = "200", rate: float = 100.0):
    n = int((stop - start) * rate)
    return [(start + i / rate, code, sec) for i in range(n)]


def test_recovered_at_once_when_every_bin_is_healthy():
    assert rb.recovered_after(_steady(0, 20, 0.005), slow_s=0.01) == 0.0


def test_a_lone_slow_request_is_not_a_failure_to_recover():
    events = _steady(0, 20, 0.005)
    events[1500] = (events[1500][0], "200", 0.5)  # one outlier at t = 15 s
    assert rb.recovered_after(events, slow_s=0.01) == 0.0


def test_a_backlog_draining_for_three_seconds():
    events = _steady(0, 3, 0.05) + _steady(3, 20, 0.005)
    assert rb.recovered_after(events, slow_s=0.01) == 3.0


def test_refusals_late_in_the_phase_mean_not_recovered_until_after_them():
    events = _steady(0, 10, 0.005) + _steady(10, 10.4, 0.005, code="429") + _steady(10.5, 20, 0.005)
    assert rb.recovered_after(events, slow_s=0.01) == 10.5


def test_unhealthy_to_the_end():
    assert rb.recovered_after(_steady(0, 5, 0.05), slow_s=0.01) == 5.0


def test_retry_summary_splits_retries_by_whether_the_load_still_ran():
    retries = [(1.0, 10.0, "200"), (1.0, 59.9, "429"), (2.0, 60.5, "200"), (3.0, 61.0, "429")]
    got = rb.retry_summary(retries, 60.0)
    assert (got["retried"], got["admitted"], got["admitted_fraction"]) == (4, 2, 0.5)
    assert (got["retried_during_load"], got["admitted_during_load"]) == (2, 1)
    assert (got["retried_after_load"], got["admitted_after_load"]) == (2, 1)
    assert got["retry_after_hints_s"] == {"1": 2, "2": 1, "3": 1}
    assert rb.retry_summary([], 60.0)["admitted_fraction"] is None


def test_histogram_quantile_of_the_observations_between_two_scrapes():
    before = {0.1: 10.0, 0.5: 10.0, 1.0: 10.0, float("inf"): 10.0}
    after = {0.1: 10.0, 0.5: 60.0, 1.0: 110.0, float("inf"): 110.0}  # 50 in (0.1, 0.5], 50 in (0.5, 1]
    assert rb.histogram_quantile(0.5, before, after) == 0.5
    assert abs(rb.histogram_quantile(0.99, before, after) - (0.5 + 0.5 * 49 / 50)) < 1e-9
    assert rb.histogram_quantile(0.5, after, after) is None  # nothing observed in between
    beyond = {0.1: 0.0, 1.0: 0.0, float("inf"): 5.0}
    assert rb.histogram_quantile(0.5, {}, beyond) == 1.0  # in +Inf: the last finite bound


def test_bucket_counts_picks_the_labelled_series():
    text = (
        "# HELP x_seconds x\n# TYPE x_seconds histogram\n"
        'x_seconds_bucket{code="200",le="0.5"} 3.0\nx_seconds_bucket{code="200",le="+Inf"} 4.0\n'
        'x_seconds_bucket{code="429",le="0.5"} 7.0\nx_seconds_bucket{code="429",le="+Inf"} 7.0\n'
        'x_seconds_count{code="200"} 4.0\nx_seconds_sum{code="200"} 1.0\n'
    )
    assert rb.bucket_counts(text, "x_seconds", {"code": "200"}) == {0.5: 3.0, float("inf"): 4.0}
    assert rb.sample_value(text, "x_seconds_count", {"code": "200"}) == 4.0
    assert rb.sample_value(text, "x_seconds_sum", {"code": "200"}) == 1.0
    assert rb.sample_value(text, "x_seconds_bucket", {"le": "+Inf"}) == 11.0  # both codes' series


def test_windows_cut_a_scheduled_run_by_phase():
    lg = rb.sys.modules["loadgen"]
    ev = lg.Event
    run = lg.ScheduledRun(
        100.0,
        [
            ev(100.1, 0.01, 200, 0, False, None),
            ev(100.5, 0.02, 429, 0, False, 1.0),
            ev(101.2, 0.03, 200, 1, False, None),
            ev(101.6, 0.01, 200, 0, True, 1.0),  # the retry of phase 0's refusal, sent during phase 1
            ev(101.7, 0.01, 500, 1, False, None),
            ev(101.8, 0.01, 503, 1, False, None),  # a refusal without Retry-After
        ],
        {},
    )
    phases = [lg.Phase("a", 1.0, rps=10, retry=True), lg.Phase("b", 1.0, rps=10)]
    samples = [(100.0, 1.0, 100), (100.9, 3.0, 120), (101.5, 2.0, 110)]
    a, b = rb.windows(run, phases, samples)
    assert a.codes == {"200": 1, "429": 1} and a.latencies_ok == [0.01]
    assert [code for _, code, _ in a.events] == ["200", "429"]
    assert [t for t, _, _ in a.events] == pytest.approx([0.1, 0.5])
    assert [(h, code) for h, _, code in a.retries] == [(1.0, "200")] and a.retry_latencies_ok == [0.01]
    assert a.retries[0][1] == pytest.approx(1.6)  # sent 1.6 s into phase a: after its load ended
    assert (a.max_inflight, a.rss_start, a.rss_end, a.rss_max) == (3.0, 100, 120, 120)
    assert b.codes == {"200": 1, "500": 1, "503": 1}
    assert b.errors == 1 and b.retry_after_missing == 1 and b.max_inflight == 2.0

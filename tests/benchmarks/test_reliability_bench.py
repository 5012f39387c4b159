"""Unit tests of ``benchmarks/reliability.py``'s pure parts (the benchmark itself is run by hand)."""

from __future__ import annotations

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

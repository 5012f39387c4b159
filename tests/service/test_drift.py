"""The drift monitor (binned PSI / KS / W1 over a ring buffer) and the gauges it drives."""

from __future__ import annotations

import numpy as np
import pytest
import toy
from service_helpers import ServeApp, metric_value

from service.monitoring.drift import DriftMonitor, WindowState

REF = np.quantile(np.random.default_rng(0).gamma(2.0, 1.0, 50_000), np.linspace(0, 1, 1000)).tolist()


def _exact_ks_w1(window: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    grid = np.sort(np.concatenate([window, sample]))
    fw = np.searchsorted(np.sort(window), grid, side="right") / window.size
    fs = np.searchsorted(np.sort(sample), grid, side="right") / sample.size
    return float(np.abs(fw - fs).max()), float((np.abs(fw - fs)[:-1] * np.diff(grid)).sum())


def test_in_distribution_window_shows_no_drift() -> None:
    mon = DriftMonitor(REF, window=5000, threshold=REF[950])
    stats = mon.update(np.random.default_rng(1).gamma(2.0, 1.0, 5000))
    assert stats.psi < 0.02 and stats.ks < 0.03 and stats.wasserstein < 0.06
    assert stats.ood_rate == pytest.approx(0.05, abs=0.015)


def test_shifted_window_matches_exact_statistics() -> None:
    rng = np.random.default_rng(2)
    mon = DriftMonitor(REF, window=4000, threshold=REF[950])
    shifted = rng.gamma(2.0, 1.0, 4000) * 1.5 + 0.3
    stats = mon.update(shifted)
    ks, w1 = _exact_ks_w1(shifted, rng.gamma(2.0, 1.0, 200_000))
    assert stats.psi > 0.2
    assert stats.ks == pytest.approx(ks, abs=0.02)
    assert stats.wasserstein == pytest.approx(w1, rel=0.05)


def test_ring_buffer_evicts_the_oldest() -> None:
    rng = np.random.default_rng(3)
    mon = DriftMonitor(REF, window=1000, threshold=REF[950])
    mon.update(rng.gamma(2.0, 1.0, 1000) + 5.0)  # far out: huge drift
    for _ in range(10):  # 1000 in-distribution scores in batches push all of them out
        stats = mon.update(rng.gamma(2.0, 1.0, 100))
    assert stats.count == 1000
    assert stats.ks < 0.06 and stats.wasserstein < 0.15 and stats.psi < 0.1
    assert int(mon._counts.sum()) == 1000  # per-bin counts stay consistent with the window


@pytest.mark.anyio
async def test_gauges_move_when_inputs_shift(serve_app: ServeApp) -> None:
    rng = np.random.default_rng(4)
    normal = [
        toy.instance(age=float(a), heart_rate=float(h), creatinine=float(c), sex=str(s))
        for a, h, c, s in zip(
            rng.normal(60, 15, 200),
            rng.normal(90, 20, 200),
            np.abs(rng.normal(1.2, 0.6, 200)),
            rng.choice(["female", "male"], 200),
            strict=True,
        )
    ]
    shifted = [toy.instance(age=200.0, heart_rate=280.0, creatinine=15.0) for _ in range(200)]
    async with serve_app(drift_window=200) as client:

        async def gauges() -> dict[str, float]:
            text = (await client.get("/metrics")).text
            out = {
                s: metric_value(text, "lrbnn_uncertainty_drift", model="toy", statistic=s)
                for s in ("psi", "ks", "wasserstein")
            }
            out["ood_rate"] = metric_value(text, "lrbnn_ood_rate", model="toy")
            return {k: float(v or 0.0) for k, v in out.items()}

        r = await client.post("/v1/models/toy:predict", json={"instances": normal, "parameters": {"seed": 1}})
        assert r.status_code == 200
        calm = await gauges()
        r = await client.post(
            "/v1/models/toy:predict", json={"instances": shifted, "parameters": {"seed": 2}}
        )
        assert r.status_code == 200
        drifted = await gauges()
        assert drifted["psi"] > calm["psi"] + 0.5
        assert drifted["ks"] > 0.5 > calm["ks"]
        assert drifted["wasserstein"] > calm["wasserstein"]
        assert drifted["ood_rate"] > 0.5 > calm["ood_rate"]


@pytest.mark.anyio
async def test_requests_publish_the_statistics_at_most_every_interval(
    serve_app: ServeApp, monkeypatch
) -> None:
    """The O(n) statistics are not computed per request: requests publish at most every
    ``DRIFT_PUBLISH_INTERVAL_S``, ``/metrics`` on every scrape, so a scrape reads the window as it is."""
    from service import inference

    monkeypatch.setattr(inference, "DRIFT_PUBLISH_INTERVAL_S", 3600.0)
    body = {"instances": [toy.instance()], "parameters": {"seed": 1, "samples": 8}}
    async with serve_app() as client:
        monitor = client.app.state.lrbnn.inference.drift["toy"]  # type: ignore[attr-defined]
        calls: list[int] = []
        real, stats_of = monitor.stats, monitor.stats_of
        monkeypatch.setattr(monitor, "stats_of", lambda state: calls.append(1) or stats_of(state))
        for _ in range(10):
            assert (await client.post("/v1/models/toy:predict", json=body)).status_code == 200
        assert len(calls) <= 1  # the first request after attach may publish; the next nine do not
        before = len(calls)
        shifted = {"instances": [toy.instance(age=200.0, heart_rate=280.0, creatinine=15.0)] * 50}
        assert (await client.post("/v1/models/toy:predict", json=shifted)).status_code == 200
        text = (await client.get("/metrics")).text
        assert len(calls) == before + 1  # the scrape published
        assert float(metric_value(text, "lrbnn_ood_rate", model="toy") or 0.0) == pytest.approx(
            real().ood_rate
        )
        assert real().ood_rate > 0.5


def test_update_is_add_then_stats() -> None:
    a, b = DriftMonitor(REF, 100, 3.0), DriftMonitor(REF, 100, 3.0)
    scores = np.random.default_rng(2).gamma(2.0, 1.0, 150)
    b.add(scores)
    assert a.update(scores) == b.stats()


def test_windows_merge_by_adding_their_states() -> None:
    """Two workers' windows merged give the statistics of one window over all their scores."""
    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.gamma(2.0, 1.0, 300) * 1.4, [-1.0, 40.0]])  # some beyond the grid
    a, b, whole = (DriftMonitor(REF, 1000, REF[950]) for _ in range(3))
    a.add(scores[::2])
    b.add(scores[1::2])
    whole.add(scores)
    merged = a.stats_of(a.state() + b.state())
    want = whole.stats()
    assert (merged.count, merged.ks, merged.psi, merged.ood_rate) == (
        want.count,
        want.ks,
        want.psi,
        want.ood_rate,
    )
    assert merged.wasserstein == pytest.approx(want.wasserstein, rel=1e-12)
    assert a.stats() != want  # one worker's half alone is not the whole
    empty = DriftMonitor(REF, 10, 1.0)
    assert empty.stats_of(empty.state()).count == 0


def test_window_state_round_trips_and_refuses_garbage() -> None:
    mon = DriftMonitor(REF, 50, REF[950])
    mon.add(np.random.default_rng(6).gamma(2.0, 1.0, 80))
    state = mon.state()
    again = WindowState.from_array(state.to_array())
    assert np.array_equal(again.counts, state.counts)
    assert (again.filled, again.ood_sum, again.below, again.above) == (
        state.filled,
        state.ood_sum,
        state.below,
        state.above,
    )
    assert mon.stats_of(again) == mon.stats()
    for bad in (np.zeros(3), np.full(10, np.nan), np.zeros((2, 8))):
        with pytest.raises(ValueError, match="drift window state"):
            WindowState.from_array(bad)
    other = DriftMonitor(REF[:500], 50, 1.0).state()
    with pytest.raises(ValueError, match="different reference"):
        _ = state + other
    with pytest.raises(ValueError, match="different reference"):
        mon.stats_of(WindowState(other.counts, 1, 0, 0.0, 0.0))

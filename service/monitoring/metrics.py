"""Every Prometheus object of the contract, defined once, in a registry owned by one app instance.

Label values come only from the model repository (model name, version, sha256, ...) or from closed
enums (endpoint, code, reason, statistic), never from what a client typed; an unknown model therefore
creates no series. Series for a model are created when it is loaded, so dashboards see zeros at once.

With several worker processes (``LRBNN_WORKERS`` > 1) the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
before any worker starts, prometheus-client keeps every value in per-process files there, and
``/metrics`` (answered by whichever worker) aggregates all of them: counters and histograms are
summed; each gauge says how in its ``multiprocess_mode`` (in-flight requests summed over live workers,
the model-info series the maximum, the drift statistics and OOD rate the most recent update of any
worker, each worker computing them over every worker's window merged: ``drift_share.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from model_core.ood import OODReason
from service.errors import Reason
from service.reservations import Outcome as RetryOutcome

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Mutual information is at most ln 2 ≈ 0.69 for a binary model; predictive std is unbounded.
UNCERTAINTY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DRIFT_STATISTICS = ("psi", "ks", "wasserstein")
#: Mahalanobis distances: in-distribution inputs of d features sit near sqrt(d) (5.6 for ICU's 31), a
#: unit error at tens to thousands
#: prediction -> outcome: a forecast's truth an hour later, a discharge days to weeks later
DELAY_BUCKETS = (
    1.0,
    60.0,
    600.0,
    3600.0,
    6 * 3600.0,
    86400.0,
    2 * 86400.0,
    4 * 86400.0,
    7 * 86400.0,
    14 * 86400.0,
    30 * 86400.0,
    90 * 86400.0,
)
NOVELTY_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.5, 15.0, 20.0, 30.0, 50.0, 100.0, 1000.0)


def reason_label(reasons: list[str]) -> str:
    """The ``reason`` label of an OOD prediction: the detectors that fired, in ``OODReason`` order,
    joined with '+'. Exactly one increment per OOD prediction, so ``sum by (model)`` counts OOD
    predictions, and the label set is bounded (the 7 non-empty combinations of 3 detectors)."""
    return "+".join(reasons)


#: every ``reason`` label value, created (at zero) when a model is registered
REASON_LABELS = tuple(
    reason_label([r.value for i, r in enumerate(OODReason) if mask >> i & 1])
    for mask in range(1, 2 ** len(OODReason))
)

# ``*_created`` series double the scrape size and no dashboard uses them.
disable_created_metrics()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.request_duration = Histogram(
            "lrbnn_request_duration_seconds",
            "End-to-end request latency.",
            ["model", "endpoint", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "lrbnn_queue_wait_seconds",
            "Time from enqueue to batch dispatch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "lrbnn_inference_duration_seconds",
            "Runtime time of one merged batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lrbnn_batch_size", "Instances per merged batch.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.predictions = Counter("lrbnn_predictions", "Instances predicted.", ["model"], registry=r)
        self.ood_predictions = Counter(
            "lrbnn_ood_predictions",
            "Instances flagged out-of-distribution, by the detectors that fired (joined with '+').",
            ["model", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "lrbnn_requests_rejected", "Requests refused, by reason.", ["model", "reason"], registry=r
        )
        self.retry_reservations = Counter(
            "lrbnn_retry_reservations",
            "Retry reservations: booked, full (none to give), redeemed, early, stale.",
            ["model", "outcome"],
            registry=r,
        )
        self.predictive_variance = Histogram(
            "lrbnn_predictive_variance",
            "Total predictive variance per instance.",
            ["model"],
            buckets=UNCERTAINTY_BUCKETS,
            registry=r,
        )
        self.epistemic = Histogram(
            "lrbnn_epistemic_uncertainty",
            "Epistemic uncertainty per instance.",
            ["model"],
            buckets=UNCERTAINTY_BUCKETS,
            registry=r,
        )
        self.ood_score = Histogram(
            "lrbnn_ood_score", "OOD score per instance.", ["model"], buckets=UNCERTAINTY_BUCKETS, registry=r
        )
        self.novelty_score = Histogram(
            "lrbnn_novelty_score",
            "Input novelty (shrinkage Mahalanobis distance) per instance.",
            ["model"],
            buckets=NOVELTY_BUCKETS,
            registry=r,
        )
        self.ood_rate = Gauge(
            "lrbnn_ood_rate",
            "Fraction of OOD-flagged instances in the drift window.",
            ["model"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.drift = Gauge(
            "lrbnn_uncertainty_drift",
            "Drift of the windowed OOD scores from the checkpoint's reference.",
            ["model", "statistic"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.novelty_drift = Gauge(
            "lrbnn_novelty_drift",
            "Drift of the windowed novelty scores from the checkpoint's calibration.novelty.quantiles.",
            ["model", "statistic"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.feature_drift = Gauge(
            "lrbnn_feature_drift",
            "Drift of each input feature's sliding window from its training distribution"
            " (drift_reference.features).",
            ["model", "feature", "statistic"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.outcomes = Counter(
            "lrbnn_outcomes", "Outcomes accepted (joined to their predictions).", ["model"], registry=r
        )
        self.card_feedback = Counter(
            "lrbnn_card_feedback",
            "CDS Hooks card feedback accepted, by what the clinician did with the card.",
            ["model", "outcome"],
            registry=r,
        )
        self.outcome_delay = Histogram(
            "lrbnn_outcome_delay_seconds",
            "Time from a prediction to its accepted outcome.",
            ["model"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.realized = Gauge(
            "lrbnn_realized_performance",
            "Performance on the latest joined outcomes (LRBNN_PERFORMANCE_WINDOW); NaN where undefined.",
            ["model", "metric"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.estimated = Gauge(
            "lrbnn_estimated_performance",
            "Label-free (CBPE) estimate over the latest predictions, assuming calibrated probabilities.",
            ["model", "metric"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.store_predictions = Counter(
            "lrbnn_store_predictions",
            "Predicted instances by what the store did with them (stored, queue_full, error).",
            ["model", "result"],
            registry=r,
        )
        self.inflight = Gauge(
            "lrbnn_inflight_requests",
            "Requests being served.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "lrbnn_model_info",
            "The served version of each model (value 1).",
            ["model", "version", "sha256", "method", "rank", "device"],
            registry=r,
            multiprocess_mode="livemax",
        )
        #: set by the supervisor of several workers: /metrics then aggregates every worker's files
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._info_labels: dict[str, tuple[str, ...]] = {}

    def register_model(
        self,
        model: str,
        version: str,
        sha256: str,
        method: str,
        rank: str,
        device: str,
        realized: Sequence[str] = (),
        estimated: Sequence[str] = (),
        store_results: Sequence[str] = (),
    ) -> None:
        """Create the model's series (zeros) and point ``lrbnn_model_info`` at this version."""
        old = self._info_labels.pop(model, None)
        if old is not None:
            # in multiprocess mode a removed series stays in this worker's file: zero it first, so the
            # old version reads 0 once every worker has moved on
            self.model_info.labels(*old).set(0)
            self.model_info.remove(*old)
        labels = (model, version, sha256, method, rank, device)
        self.model_info.labels(*labels).set(1)
        self._info_labels[model] = labels
        self.predictions.labels(model)
        for combo in REASON_LABELS:
            self.ood_predictions.labels(model, combo)
        self.inflight.labels(model)
        self.ood_rate.labels(model)
        for stat in DRIFT_STATISTICS:
            self.drift.labels(model, stat)
        for reason in Reason:
            self.rejected.labels(model, reason.value)
        for booking in RetryOutcome:
            self.retry_reservations.labels(model, booking.value)
        self.outcomes.labels(model)
        for outcome in ("accepted", "overridden"):
            self.card_feedback.labels(model, outcome)
        self.outcome_delay.labels(model)
        for metric in realized:  # NaN until outcomes arrive: "no data", not a perfect 0
            self.realized.labels(model, metric).set(float("nan"))
        for metric in estimated:
            self.estimated.labels(model, metric).set(float("nan"))
        for result in store_results:
            self.store_predictions.labels(model, result)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: prometheus-client's ``labels`` validates and locks on
        every call (~15 us), and a request touches a dozen series. Only ``model_info`` ever has a label
        set removed, and it is never read through here."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

"""The request path shared by V1 and V2: validate -> preprocess -> batch -> record -> outputs.

``samples`` and ``seed`` are resolved here, once; the protocol modules only translate their wire formats
into :meth:`InferenceService.predict` calls and its :class:`InferenceResult` back into answers.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_core.checkpoint.manifest import Task
from model_core.conformal import prediction_sets, served_interval
from model_core.ood import reasons
from service.batching import ModelBatcher
from service.errors import InvalidInput, PayloadTooLarge
from service.inputs import Encoded, InputAdapter
from service.monitoring.drift import DriftMonitor
from service.monitoring.drift_publisher import DriftPublisher
from service.monitoring.drift_share import DriftShare
from service.monitoring.feature_drift import FEATURE_STATISTICS, FeatureDriftMonitor
from service.monitoring.metrics import DRIFT_STATISTICS, Metrics, reason_label
from service.monitoring.performance import estimated_metrics, realized_metrics
from service.repository import ServedModel
from service.reservations import NO_CLAIM, RetryBook, RetryClaim
from service.runtime.base import Outputs
from service.settings import Settings
from service.store.db import PredictionStore
from service.store.records import PredictionBatch, StoreResult

log = logging.getLogger("lrbnn.service.inference")

MAX_SEED = 2**63 - 1
#: requests set a model's drift gauges at most this often (``/metrics`` sets them on every scrape)
DRIFT_PUBLISH_INTERVAL_S = 0.1
#: The key of a model's novelty-score window in ``InferenceService.drift`` (beside the epistemic
#: window under the model's name): the same ring buffer, statistics and multi-worker sharing, against
#: ``calibration.novelty.quantiles``. A unit separator cannot occur in a model directory's name.
NOVELTY_WINDOW = "\x1fnovelty"


#: the key of a model's per-feature window (``InferenceService.features``) in the worker share
FEATURES_WINDOW = "\x1ffeatures"


def novelty_key(model: str) -> str:
    return model + NOVELTY_WINDOW


def new_ids(n: int) -> list[str]:
    """``n`` prediction ids: 128 bits from the OS's CSPRNG each (hex), unguessable and independent of
    the inputs, so an id reveals nothing and cannot be forged to attach an outcome to another's
    prediction. About 0.3 us each."""
    return [secrets.token_hex(16) for _ in range(n)]


@dataclass(frozen=True)
class Instances:
    """A request's inputs as named objects (V1, and the instances FHIR and CDS Hooks build)."""

    rows: Sequence[Mapping[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)

    def encode(self, adapter: InputAdapter) -> Encoded:
        return adapter.encode(self.rows)


@dataclass(frozen=True)
class Tensor:
    """A request's inputs as the decoded Open Inference Protocol tensor (REST and gRPC)."""

    x: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def encode(self, adapter: InputAdapter) -> Encoded:
        return adapter.encode_tensor(self.x)


@dataclass(frozen=True)
class InferenceResult:
    served: ServedModel
    samples: int
    outputs: Outputs
    #: the combined decision: any of the epistemic score, the novelty score, an implausible value
    ood: np.ndarray
    imputed: list[list[str]]
    flagged: list[list[str]]
    #: per instance, the detectors that fired (``model_core.ood.OODReason`` values, in that order)
    ood_reasons: list[list[str]]
    #: per instance, its ``prediction_id`` (``new_ids``)
    prediction_ids: list[str]
    #: classification with conformal calibration: per instance, the labels of its conformal set
    prediction_sets: list[list[str]] | None = None


def decide(
    served: ServedModel, outputs: Outputs, z: np.ndarray, implausible: np.ndarray | None
) -> tuple[Outputs, np.ndarray, list[list[str]]]:
    """The novelty score (added to the outputs as ``novelty_score``) and the one OOD decision with its
    reasons, by the thresholds the checkpoint calibrated jointly (``model_core.ood``)."""
    calib = served.manifest.calibration
    novelty = None
    if served.novelty is not None and calib.novelty is not None:
        novelty = served.novelty.score(z)
        outputs = {**outputs, "novelty_score": novelty.astype(np.float32)}
    flag, why = reasons(
        outputs["ood_score"],
        calib.ood_threshold,
        novelty,
        None if calib.novelty is None else calib.novelty.threshold,
        implausible,
    )
    return outputs, flag, why


def label_sets(served: ServedModel, outputs: Outputs) -> list[list[str]] | None:
    """Each instance's conformal prediction set as label names (two labels: refer), or None."""
    conformal = served.manifest.calibration.conformal
    labels = served.manifest.output_schema.labels
    if conformal is None or served.manifest.task is Task.REGRESSION or not labels:
        return None
    members = prediction_sets(np.asarray(outputs["mean"], dtype=np.float64), conformal.quantile)
    return [[labels[k] for k in np.flatnonzero(row)] for row in members]


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        share: DriftShare | None = None,
        store: PredictionStore | None = None,
    ) -> None:
        self.settings = settings
        #: every answered instance is queued here (off the request path); None: nothing is stored
        self.store = store
        self.metrics = metrics
        self.batchers: dict[str, ModelBatcher] = {}
        self.drift: dict[str, DriftMonitor] = {}
        #: per-feature drift windows, by model (tabular checkpoints with drift_reference.features)
        self.features: dict[str, FeatureDriftMonitor] = {}
        self._feature_series: dict[str, set[tuple[str, str]]] = {}  # the feature gauges set per model
        self._published: dict[str, float] = {}  # when each model's drift gauges were last set
        #: with several workers: the drift windows shared and merged over all of them (None: one process)
        self.cluster = None if share is None else DriftPublisher(share)

    def attached(self, name: str) -> bool:
        """Whether requests for ``name`` can be answered: its batcher and series exist. The repository
        holds a model a moment before that (loading runs in a thread; attaching on the loop follows)."""
        return name in self.batchers

    def attach(self, served: ServedModel) -> None:
        """Start serving ``served`` (first load or reload): series, drift window, batcher."""
        arch = served.manifest.architecture
        self.metrics.register_model(
            served.name,
            served.version,
            served.manifest.sha256,
            arch.method.value,
            "" if arch.rank is None else str(arch.rank),
            served.runtime.device,
            realized=[m.value for m in realized_metrics(served.manifest.task)],
            estimated=[m.value for m in estimated_metrics(served.manifest.task)],
            store_results=[r.value for r in StoreResult] if self.store is not None else (),
        )
        ref = served.manifest.drift_reference.quantiles
        self.drift[served.name] = DriftMonitor(ref, self.settings.drift_window, served.ood_threshold)
        novelty, key = served.manifest.calibration.novelty, novelty_key(served.name)
        if novelty is not None and served.novelty is not None:
            self.drift[key] = DriftMonitor(novelty.quantiles, self.settings.drift_window, novelty.threshold)
            for stat in DRIFT_STATISTICS:
                self.metrics.child(self.metrics.novelty_drift, served.name, stat)
        else:  # a reload to a version without a detector: no stale window
            self.drift.pop(key, None)
        refs = served.manifest.drift_reference.features
        binner = served.inputs.feature_binner(refs) if refs else None
        series: set[tuple[str, str]] = set()
        if binner is not None:
            self.features[served.name] = FeatureDriftMonitor(binner, self.settings.drift_window)
            for name, kind in zip(binner.names, binner.kinds, strict=True):
                for stat in FEATURE_STATISTICS if kind == "numeric" else ("psi",):
                    series.add((name, stat))
                    self.metrics.child(self.metrics.feature_drift, served.name, name, stat).set(0.0)
        else:
            self.features.pop(served.name, None)
        # a reload to a version without (some of) these features: their last values would read as
        # current, so they read NaN ("no data") instead (removing a series is unreliable across workers)
        for name, stat in self._feature_series.get(served.name, set()) - series:
            self.metrics.child(self.metrics.feature_drift, served.name, name, stat).set(float("nan"))
        self._feature_series[served.name] = series
        if self.cluster is not None:  # the windows of this version (a reload: the old one's are gone)
            for window, present in (
                (served.name, True),
                (key, key in self.drift),
                (served.name + FEATURES_WINDOW, served.name in self.features),
            ):
                if present:
                    self.cluster.track(window, served.version)
                else:
                    self.cluster.forget(window, served.version)
        if served.name not in self.batchers:
            batcher = ModelBatcher(
                served.name,
                self.metrics,
                self.settings.max_batch_size,
                self.settings.max_batch_delay_ms / 1000.0,
                self.settings.max_queue,
                max_wait_s=self.settings.max_queue_wait_ms / 1000.0,
                max_row_samples=self.settings.max_batch_row_samples,
                book=RetryBook(
                    served.name,
                    self.settings.retry_token_key.get_secret_value(),
                    self.settings.retry_share,
                    self.settings.retry_horizon_s,
                ),
            )
            batcher.start()
            self.batchers[served.name] = batcher

    async def stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        for batcher in self.batchers.values():
            await batcher.stop()

    def start_sharing(self, interval_s: float = DRIFT_PUBLISH_INTERVAL_S) -> None:
        """With several workers: share every changed drift window every ``interval_s``
        (:meth:`DriftPublisher.start`)."""
        if self.cluster is not None:
            self.cluster.start(self._windows, interval_s)

    def _windows(self) -> list[tuple[str, DriftMonitor | FeatureDriftMonitor]]:
        windows: list[tuple[str, DriftMonitor | FeatureDriftMonitor]] = list(self.drift.items())
        return windows + [(m + FEATURES_WINDOW, f) for m, f in self.features.items()]

    # -- validation ----------------------------------------------------------------------------
    def resolve_samples(
        self, served: ServedModel, samples: int | None, field: str = "parameters.samples"
    ) -> int:
        if samples is None:
            return served.default_samples
        if not 1 <= samples <= self.settings.max_samples:
            raise InvalidInput(
                f"{field} must be between 1 and {self.settings.max_samples}, got {samples}", field=field
            )
        return samples

    @staticmethod
    def check_seed(seed: int | None, field: str = "parameters.seed") -> int | None:
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InvalidInput(f"{field} must be between 0 and 2**63-1, got {seed}", field=field)
        return seed

    def check_count(self, count: int, field: str = "instances") -> None:
        if count < 1:
            raise InvalidInput(f"{field} must hold at least one instance", field=field)
        if count > self.settings.max_instances:
            raise PayloadTooLarge(
                f"{field} holds {count} instances; at most {self.settings.max_instances} per request",
                field=field,
            )

    # -- the path ------------------------------------------------------------------------------
    def retry_claim(self, served: ServedModel, header: str | None) -> RetryClaim:
        """Read a request's ``Lrbnn-Retry-Token`` header against the model's book (redeeming a token
        presented in time), counted in ``lrbnn_retry_reservations_total``."""
        book = self.batchers[served.name].book
        if header is None or book is None:
            return NO_CLAIM
        claim, outcome = book.claim(header)
        if outcome is not None:
            self.metrics.child(self.metrics.retry_reservations, served.name, outcome.value).inc()
        return claim

    def check_admission(self, served: ServedModel, claim: RetryClaim = NO_CLAIM) -> None:
        """Refuse before the body is parsed when the model's queue is already over budget
        (:meth:`ModelBatcher.check_admission`)."""
        self.batchers[served.name].check_admission(claim)

    async def predict(
        self,
        served: ServedModel,
        inputs: Instances | Tensor,
        samples: int | None,
        seed: int | None,
        disconnected: Callable[[], Coroutine[Any, Any, object]] | None = None,
        claim: RetryClaim = NO_CLAIM,
    ) -> InferenceResult:
        self.check_count(len(inputs))
        s = self.resolve_samples(served, samples)
        self.check_seed(seed)
        batcher = self.batchers[served.name]
        # before the preprocessing a refused request would waste
        admitted = batcher.admit(len(inputs), s, claim)
        enc = inputs.encode(served.inputs)
        outputs = await batcher.submit(
            served, enc.x, s, seed, self.settings.request_timeout_s, disconnected, since=admitted, claim=claim
        )
        if served.manifest.task is Task.REGRESSION:
            low, high = served_interval(served.manifest.calibration, outputs["mean"], outputs["variance"])
            outputs = {**outputs, "interval_low": low, "interval_high": high}
        outputs, ood, why = decide(served, outputs, enc.z, enc.implausible)
        self.record(served, outputs, ood, why, enc.z)
        ids = new_ids(len(inputs))
        sets = label_sets(served, outputs)
        if self.store is not None:
            self.store.submit(
                PredictionBatch(
                    ids,
                    time.time(),
                    served.name,
                    served.version,
                    served.manifest.sha256,
                    outputs,
                    ood,
                    why,
                    sets,
                    enc.z if self.settings.store_features and served.stores_features else None,
                )
            )
        return InferenceResult(served, s, outputs, ood, enc.imputed, enc.flagged, why, ids, sets)

    def record(
        self,
        served: ServedModel,
        outputs: Outputs,
        ood: np.ndarray,
        why: list[list[str]],
        z: np.ndarray | None = None,
    ) -> None:
        """Uncertainty histograms, counters and the drift windows: O(batch), never O(window)."""
        m, name = self.metrics, served.name
        n = int(ood.shape[0])
        m.child(m.predictions, name).inc(n)
        for combo in (reason_label(r) for r in why if r):
            m.child(m.ood_predictions, name, combo).inc()
        for hist, key in (
            (m.predictive_variance, "variance"),
            (m.epistemic, "epistemic"),
            (m.ood_score, "ood_score"),
            (m.novelty_score, "novelty_score"),
        ):
            if key not in outputs:
                continue
            child = m.child(hist, name)
            for v in np.asarray(outputs[key], dtype=np.float64).reshape(n, -1).sum(axis=1).tolist():
                child.observe(v)
        self.drift[name].add(outputs["ood_score"], ood)
        if "novelty_score" in outputs and novelty_key(name) in self.drift:
            self.drift[novelty_key(name)].add(outputs["novelty_score"])
        features = self.features.get(name)
        if features is not None and z is not None:
            features.add(z)
        now = time.monotonic()
        if now - self._published.get(name, -math.inf) >= DRIFT_PUBLISH_INTERVAL_S:
            self.publish_drift(name, now)

    def publish_drift(self, name: str | None = None, now: float | None = None) -> None:
        """Set the drift and OOD-rate gauges of one model (default: all) from its window.

        The statistics cost O(n) in the reference grid (~1000 quantiles), too much for every request of a
        small model, so requests publish at most every ``DRIFT_PUBLISH_INTERVAL_S`` per model and
        ``/metrics`` publishes every model just before it renders: a scrape always reads the window as
        it is. With several workers the statistics are over all their windows merged (the answering
        worker's as it is, the others' as they last shared them: at most ~100 ms old).
        """
        m = self.metrics
        now = time.monotonic() if now is None else now
        keys = [name, novelty_key(name)] if name is not None else list(self.drift)
        for key in keys:
            monitor = self.drift.get(key)
            if monitor is None:
                continue
            added = monitor.added
            state = monitor.state()
            if self.cluster is not None:
                state = self.cluster.publish(key, state, added)
            stats = monitor.stats_of(state)
            if key.endswith(NOVELTY_WINDOW):  # the novelty score's window: its own gauge
                model = key[: -len(NOVELTY_WINDOW)]
                for stat in DRIFT_STATISTICS:
                    m.child(m.novelty_drift, model, stat).set(getattr(stats, stat))
                continue
            self._published[key] = now
            m.child(m.ood_rate, key).set(stats.ood_rate)
            for stat in DRIFT_STATISTICS:
                m.child(m.drift, key, stat).set(getattr(stats, stat))
            self._publish_features(key)

    def _publish_features(self, name: str) -> None:
        """Set ``lrbnn_feature_drift`` of one model from its window (merged over workers): O(F·n)."""
        monitor = self.features.get(name)
        if monitor is None:
            return
        m, key = self.metrics, name + FEATURES_WINDOW
        f_state = monitor.state()
        if self.cluster is not None:
            f_state = self.cluster.publish(key, f_state, monitor.added)
        for feature, values in monitor.stats_of(f_state).items():
            for stat, value in values.items():
                m.child(m.feature_drift, name, feature, stat).set(value)

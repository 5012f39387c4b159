"""What the prediction store exchanges with the server: a queued batch of answers, an outcome joined to
its prediction, and the bounded label values of its metrics and feedback answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import orjson


class StoreResult(str, Enum):
    """Values of the ``result`` label of ``lrbnn_store_predictions_total``."""

    STORED = "stored"
    QUEUE_FULL = "queue_full"
    ERROR = "error"


class OutcomeStatus(str, Enum):
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    DUPLICATE = "duplicate"
    INVALID = "invalid"


@dataclass(frozen=True)
class PredictionBatch:
    """One answered request, as queued: turned into rows on the writer thread, not the event loop."""

    ids: Sequence[str]
    created: float
    model: str
    version: str
    sha256: str
    outputs: dict[str, np.ndarray]
    ood: np.ndarray
    reasons: list[list[str]]
    sets: list[list[str]] | None
    #: the preprocessed inputs (instance axis first); None when storing features is off
    features: np.ndarray | None

    def rows(self) -> list[dict[str, Any]]:
        n = len(self.ids)
        cols = {k: np.asarray(v).reshape(n, -1) for k, v in self.outputs.items()}
        feats = None
        if self.features is not None:
            feats = np.ascontiguousarray(self.features, dtype="<f4").reshape(n, -1)
        ood = self.ood.tolist()
        out = []
        for i, pid in enumerate(self.ids):
            record: dict[str, Any] = {
                k: (c[i, 0].item() if c.shape[1] == 1 else c[i].tolist()) for k, c in cols.items()
            }
            record["ood"] = ood[i]
            record["ood_reasons"] = self.reasons[i]
            if self.sets is not None:
                record["prediction_set"] = self.sets[i]
            out.append(
                {
                    "id": pid,
                    "created": self.created,
                    "model": self.model,
                    "version": self.version,
                    "sha256": self.sha256,
                    "ood": bool(ood[i]),
                    "outputs": orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                    "features": None if feats is None else feats[i].tobytes(),
                }
            )
        return out


@dataclass(frozen=True)
class JoinedOutcome:
    """An outcome with the prediction it belongs to."""

    value: float
    received: float
    created: float
    outputs: dict[str, Any]

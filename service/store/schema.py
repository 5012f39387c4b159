"""The store's tables, in SQLAlchemy Core (the Alembic migrations create exactly these).

``predictions``: one row per answered instance, written off the request path. ``outcomes``: the ground
truth a client reports later (``POST /v1/models/{name}/feedback``), at most one per prediction, the
first one standing. ``card_feedback``: what the clinician did with the CDS Hooks card of a prediction
(accepted or overridden, with the coded override reason), a signal beside the outcome, not the outcome
itself. What is *not* here, by design: the request body, any identifier of a patient, free
text (a text model's token ids are never stored) and the client's address.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("id", String(32), primary_key=True, comment="prediction_id: 128 random bits, hex"),
    Column("created", Float, nullable=False, comment="Unix time of the answer (s)"),
    Column("model", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("sha256", String(64), nullable=False, comment="the manifest's checkpoint digest"),
    Column("ood", Boolean, nullable=False),
    Column("outputs", Text, nullable=False, comment="JSON: mean, variance, ..., ood_reasons, interval/set"),
    Column("features", LargeBinary, nullable=True, comment="preprocessed inputs, float32 LE; NULL: off"),
)
Index("ix_predictions_model_created", predictions.c.model, predictions.c.created)
Index("ix_predictions_created", predictions.c.created)

outcomes = Table(
    "outcomes",
    metadata,
    Column(
        "prediction_id",
        String(32),
        ForeignKey("predictions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("model", String(200), nullable=False),
    Column("value", Float, nullable=False, comment="regression: the value; classification: class index"),
    Column("received", Float, nullable=False, comment="Unix time the outcome was acknowledged (s)"),
)
Index("ix_outcomes_model_received", outcomes.c.model, outcomes.c.received)

card_feedback = Table(
    "card_feedback",
    metadata,
    Column(
        "prediction_id",
        String(32),
        ForeignKey("predictions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("model", String(200), nullable=False),
    Column("outcome", String(20), nullable=False, comment="accepted | overridden (CDS Hooks 2.0)"),
    Column("override_reason", String(200), nullable=True, comment="the coded reason (system|code), no text"),
    Column("received", Float, nullable=False, comment="Unix time the feedback was acknowledged (s)"),
)
Index("ix_card_feedback_model_received", card_feedback.c.model, card_feedback.c.received)

"""predictions and outcomes

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("ood", sa.Boolean, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("features", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_predictions_model_created", "predictions", ["model", "created"])
    op.create_index("ix_predictions_created", "predictions", ["created"])
    op.create_table(
        "outcomes",
        sa.Column(
            "prediction_id",
            sa.String(32),
            sa.ForeignKey("predictions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("received", sa.Float, nullable=False),
    )
    op.create_index("ix_outcomes_model_received", "outcomes", ["model", "received"])


def downgrade() -> None:
    op.drop_index("ix_outcomes_model_received", "outcomes")
    op.drop_table("outcomes")
    op.drop_index("ix_predictions_created", "predictions")
    op.drop_index("ix_predictions_model_created", "predictions")
    op.drop_table("predictions")

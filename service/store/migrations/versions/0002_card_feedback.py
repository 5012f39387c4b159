"""card_feedback: CDS Hooks feedback (accepted / overridden) on the cards of stored predictions

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "card_feedback",
        sa.Column(
            "prediction_id",
            sa.String(32),
            sa.ForeignKey("predictions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("override_reason", sa.String(200), nullable=True),
        sa.Column("received", sa.Float, nullable=False),
    )
    op.create_index("ix_card_feedback_model_received", "card_feedback", ["model", "received"])


def downgrade() -> None:
    op.drop_index("ix_card_feedback_model_received", "card_feedback")
    op.drop_table("card_feedback")

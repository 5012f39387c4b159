"""The OOD decision in plain words, for people reading a chart (RiskAssessment notes, CDS cards).

A clinician should never meet a bare score: each reason (``model_core.ood.OODReason`` values) becomes a
sentence that says what it means for this patient and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence

from model_core.ood import OODReason


def ood_sentences(reasons: Sequence[str], flagged: Sequence[str], alpha: float) -> list[str]:
    """One sentence per reason that fired (empty when the patient is within the model's experience)."""
    rate = f"{alpha:.0%}"
    words = {
        OODReason.EPISTEMIC.value: (
            "The model is less sure about this patient than about all but "
            f"{rate} of the patients it was validated on: its training data hold few patients like this one."
        ),
        OODReason.NOVELTY.value: (
            "This patient's values, taken together, are unlike those of the patients the model was trained "
            "on (a combination it has rarely or never seen)."
        ),
        OODReason.IMPLAUSIBLE.value: (
            "Some values lie outside the range the model was trained on, which often means a unit or "
            f"data-entry error: {', '.join(flagged) or 'see the flagged values'}. Check them before relying "
            "on the risk."
        ),
    }
    return [words[r] for r in reasons if r in words]


def ood_summary(reasons: Sequence[str], flagged: Sequence[str], alpha: float) -> str:
    """The sentences as one paragraph, led by the conclusion."""
    sentences = ood_sentences(reasons, flagged, alpha)
    if not sentences:
        return "The patient is within the model's experience."
    return "The patient is outside the model's experience; do not rely on this risk alone. " + " ".join(
        sentences
    )

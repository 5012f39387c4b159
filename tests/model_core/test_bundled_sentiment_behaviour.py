"""The bundled review-sentiment model tells plainly positive reviews from plainly negative ones.

The snippets below were written for this test (none is from the Rotten Tomatoes corpus) and were read
by the model only after it had been chosen on validation data (docs/training.md); the thresholds were
fixed before that. Each side must clear 0.5 by a margin on average (mean P(fresh) > 0.6 for the positive
snippets, < 0.4 for the negative ones), at most one snippet per side may land on the wrong side of 0.5,
and the two snippets of issue #19 must be 0.3 apart. The model bundled before (5 epochs from scratch,
test accuracy 0.606) passes the means (0.688 / 0.387: these snippets use common strong words such as
"best" and "bad") but fails the other two: 3 of the 8 negative snippets score above 0.5 and the issue's
pair scores 0.518 vs 0.509. The model bundled for issue #19 (docs/training.md) scores 0.962 / 0.123 on
average, 16 of 16 on the right side (the closest: 0.808 and 0.490), and the pair 0.950 vs 0.048; with
noise seeds 1 and 2 the means are 0.971 / 0.100 and 0.967 / 0.101.

Predictions use the served path's pieces: the checkpoint's own tokenizer, ``predict`` with S = 32 (the
manifest's serving default) and noise seed 0, so the result is the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_core.checkpoint import load_checkpoint
from model_core.data.tokenizer import WordTokenizer
from model_core.predict import predict

BUNDLE = Path(__file__).resolve().parents[2] / "deploy" / "models" / "review-sentiment" / "1"
SAMPLES, SEED = 32, 0
#: the mean P(fresh) of the positive snippets must exceed 1 - MARGIN, of the negative ones stay below it
MARGIN = 0.4

POSITIVE = [
    "A gripping, beautifully acted film that never lets go.",
    "A warm, funny and genuinely moving story, wonderfully told.",
    "One of the best films of the year: smart, tender and thrilling.",
    "The performances are superb and the script is sharp and witty.",
    "A joyous, charming delight from start to finish.",
    "Brilliantly directed and deeply affecting; a triumph.",
    "An exhilarating, inventive adventure that earns every laugh.",
    "Moving, intelligent and gorgeously shot, it is a rare pleasure.",
]
NEGATIVE = [
    "An utterly boring, lifeless mess of a film.",
    "A dull, tedious slog with a lazy script and no laughs.",
    "Clumsy, predictable and painfully unfunny from start to finish.",
    "The worst kind of bad movie: loud, stupid and pointless.",
    "A tired, witless comedy that wastes its talented cast.",
    "Flat, joyless and far too long; a complete waste of time.",
    "Poorly written, badly acted and instantly forgettable.",
    "A muddled, incoherent thriller that never comes to life.",
]


@pytest.fixture(scope="module")
def probabilities() -> tuple[np.ndarray, np.ndarray]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt = load_checkpoint(BUNDLE)
        tokenizer = WordTokenizer.from_dict(ckpt.manifest.input_schema.preprocessing)
        ids, _ = tokenizer.encode([*POSITIVE, *NEGATIVE])
        with torch.no_grad():
            pred = predict(ckpt.model, torch.from_numpy(ids), samples=SAMPLES, seed=SEED)
    finally:
        torch.set_num_threads(threads)
    p = pred.mean.numpy().astype(np.float64)
    return p[: len(POSITIVE)], p[len(POSITIVE) :]


def test_snippets_are_balanced_and_not_from_the_corpus() -> None:
    assert len(POSITIVE) == len(NEGATIVE) == 8
    assert len(set(POSITIVE) | set(NEGATIVE)) == 16


def test_positive_reviews_score_above_negative_ones(probabilities: tuple[np.ndarray, np.ndarray]) -> None:
    pos, neg = probabilities
    assert pos.mean() > 1 - MARGIN, f"positive snippets: mean P(fresh) {pos.mean():.3f}, each {pos.round(3)}"
    assert neg.mean() < MARGIN, f"negative snippets: mean P(fresh) {neg.mean():.3f}, each {neg.round(3)}"
    # and most individual snippets land on their side (one miss per side tolerated)
    assert (pos > 0.5).sum() >= len(pos) - 1 and (neg < 0.5).sum() >= len(neg) - 1, (pos, neg)


def test_the_two_snippets_of_issue_19_are_told_apart(probabilities: tuple[np.ndarray, np.ndarray]) -> None:
    """'A gripping, beautifully acted film…' vs 'An utterly boring, lifeless mess…' (both ~0.5 before)."""
    pos, neg = probabilities
    assert pos[0] - neg[0] > 0.3, (pos[0], neg[0])


@pytest.mark.realdata
def test_no_snippet_occurs_in_the_corpus(data_dir: Path) -> None:
    from model_core.data.sentiment import load_sentiment_frames

    corpus, _ = load_sentiment_frames(data_dir)
    texts = {t.strip().lower() for t in corpus["text"]}
    assert not [s for s in (*POSITIVE, *NEGATIVE) if s.strip().lower() in texts]

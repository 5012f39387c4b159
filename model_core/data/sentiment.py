"""Rotten Tomatoes sentiment (``--task sentiment``): fresh vs rotten review snippets, two OOD sets.

Files, under ``<data_dir>/rotten_tomatoes/`` (see ``../shared/data/README.md``):

* ``rotten_tomatoes_corpus_full.csv.bz2``: columns ``category`` in {fresh, rotten, plot}, ``text``,
  ``movie_name``. fresh = 1, rotten = 0 (``label_names = ["rotten", "fresh"]``); plot summaries are the
  **near-OOD** set (same domain — movies — different kind of text, no sentiment).
* ``guardian_headlines.csv.bz2``: column ``Text``; news headlines are the **far-OOD** set (the paper used
  AG News, which is not available here).

Cleaning: rows without text are dropped; review texts that occur more than once are kept once, and a
text that appears with both labels is dropped (it cannot be predicted and would leak between splits).

Split: 70/15/15 **by movie** (every snippet of one movie lands in the same split), stratified by the
movie's majority label, cutting each stratum's seeded permutation of movies at 70 % and 85 % of its
snippets. Splitting snippets at random would put reviews of the same movie — sharing its title, cast
and the critics' consensus — in both train and test, which inflates test accuracy; the movie split is
the honest estimate for reviews of unseen movies. The resulting split sizes and class balance are close
to, not exactly, 70/15/15 (movies have 1 to ~36 snippets); they are recorded in ``description``.

The tokenizer (:class:`~model_core.data.tokenizer.WordTokenizer`) is fitted on the training texts only
and returned as the splits' ``preprocessor`` (its ``to_dict()`` goes into the checkpoint manifest's
``input_schema`` with ``kind = "text"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_core.data.dataset import SPLIT_FRACTIONS, TabularSplits
from model_core.data.tokenizer import WordTokenizer

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CORPUS_FILE",
    "HEADLINES_FILE",
    "LABEL_NAMES",
    "TextSplits",
    "load_sentiment",
    "load_sentiment_frames",
    "movie_split",
]

CORPUS_FILE = "rotten_tomatoes/rotten_tomatoes_corpus_full.csv.bz2"
HEADLINES_FILE = "rotten_tomatoes/guardian_headlines.csv.bz2"
LABEL_NAMES = ["rotten", "fresh"]
DEFAULT_MAX_LEN = 48
DEFAULT_MIN_FREQ = 2
DEFAULT_MAX_VOCAB = 20_000


@dataclass
class TextSplits(TabularSplits):
    """Token-id splits of a text task: ``x_*`` are int64 (n, max_len) ids, ``preprocessor`` the tokenizer.

    A :class:`TabularSplits` so that training, calibration and evaluation take it unchanged; ``x_near_ood``
    adds a second OOD set (near-OOD) and ``input_kind`` tells the pipeline which manifest input schema
    to write.
    """

    x_near_ood: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.int64))
    input_kind: str = "text"
    texts: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        width = self.preprocessor.n_outputs
        for split in ("train", "val", "test", "ood", "near_ood"):
            x = getattr(self, f"x_{split}")
            if x.ndim != 2 or x.shape[1] != width or x.dtype != np.int64:
                raise ValueError(f"x_{split} must be int64 (n, {width}), got {x.dtype} {x.shape}")
            if split == "near_ood":
                continue
            y = getattr(self, f"y_{split}")
            if y.shape != (x.shape[0],) or y.dtype != np.int64:
                raise ValueError(f"y_{split} must be int64 ({x.shape[0]},), got {y.dtype} {y.shape}")

    @property
    def tokenizer(self) -> WordTokenizer:
        return self.preprocessor  # type: ignore[return-value]

    @property
    def sizes(self) -> dict[str, int]:
        return {**super().sizes, "ood_near": len(self.x_near_ood)}


def movie_split(
    movies: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions (train, val, test) with every movie in one split, stratified by majority label.

    Within each stratum (movies whose snippets are mostly label 1, and the rest) movies are permuted
    with ``seed`` and assigned in order to train until 70 % of the stratum's snippets are taken, then to
    val until 85 %, then to test. The returned positions are shuffled.
    """
    movies = np.asarray(movies, dtype=object)
    labels = np.asarray(labels)
    if movies.shape != labels.shape:
        raise ValueError("movies and labels must have the same shape")
    rng = np.random.default_rng(seed)
    names, inverse = np.unique(movies.astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(names))
    positives = np.bincount(inverse, weights=labels.astype(np.float64), minlength=len(names))
    majority = (positives / np.maximum(counts, 1)) > 0.5
    movie_part = np.zeros(len(names), dtype=np.int64)
    cuts = np.cumsum(fractions)[:2]
    for stratum in (False, True):
        ids = rng.permutation(np.flatnonzero(majority == stratum))
        if len(ids) == 0:
            continue
        done = np.cumsum(counts[ids]) - counts[ids]  # snippets assigned before this movie
        share = done / counts[ids].sum()
        movie_part[ids] = np.searchsorted(cuts, share, side="right")
    row_part = movie_part[inverse]
    return tuple(  # type: ignore[return-value]
        rng.permutation(np.flatnonzero(row_part == k)).astype(np.int64) for k in range(3)
    )


def load_sentiment_frames(data_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(corpus, headlines) as read and cleaned (no splitting)."""
    import pandas as pd

    root = Path(data_dir)
    corpus_path, headlines_path = root / CORPUS_FILE, root / HEADLINES_FILE
    for path in (corpus_path, headlines_path):
        if not path.is_file():
            raise FileNotFoundError(f"sentiment data file missing: {path}")
    corpus = pd.read_csv(corpus_path)
    missing = {"category", "text", "movie_name"} - set(corpus.columns)
    if missing:
        raise ValueError(f"{corpus_path}: missing columns {sorted(missing)}")
    corpus = corpus[corpus["text"].notna()].copy()
    corpus["text"] = corpus["text"].astype(str)
    corpus["movie_name"] = corpus["movie_name"].fillna("").astype(str)
    unknown = sorted(set(corpus["category"].astype(str)) - {"fresh", "rotten", "plot"})
    if unknown:
        raise ValueError(f"{corpus_path}: unexpected categories {unknown}")
    headlines = pd.read_csv(headlines_path)
    if "Text" not in headlines.columns:
        raise ValueError(f"{headlines_path}: no 'Text' column (columns: {list(headlines.columns)})")
    headlines = headlines[headlines["Text"].notna()].copy()
    headlines["Text"] = headlines["Text"].astype(str)
    return corpus, headlines


def load_sentiment(
    data_dir: str | os.PathLike[str],
    seed: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
    min_freq: int = DEFAULT_MIN_FREQ,
    max_vocab: int = DEFAULT_MAX_VOCAB,
) -> TextSplits:
    """Tokenised movie-grouped splits of the review snippets, plus far-OOD (Guardian) and near-OOD (plots)."""
    corpus, headlines = load_sentiment_frames(data_dir)
    reviews = corpus[corpus["category"].isin(["fresh", "rotten"])].copy()
    n_reviews_read = len(reviews)
    reviews["label"] = (reviews["category"] == "fresh").astype(np.int64)
    conflicting = reviews.groupby("text")["label"].transform("nunique") > 1
    reviews = reviews[~conflicting].drop_duplicates(subset="text", keep="first").reset_index()
    plots = corpus[corpus["category"] == "plot"]

    y = reviews["label"].to_numpy(dtype=np.int64)
    train, val, test = movie_split(reviews["movie_name"].to_numpy(), y, seed=seed)
    texts = reviews["text"].tolist()
    split_texts = {
        name: [texts[i] for i in rows] for name, rows in (("train", train), ("val", val), ("test", test))
    }
    tokenizer = WordTokenizer.fit(
        split_texts["train"], min_freq=min_freq, max_size=max_vocab, max_len=max_len
    )
    split_texts["ood"] = headlines["Text"].tolist()
    split_texts["near_ood"] = plots["text"].tolist()
    arrays: dict[str, Any] = {f"x_{name}": tokenizer.encode(t)[0] for name, t in split_texts.items()}
    for name, rows in (("train", train), ("val", val), ("test", test)):
        arrays[f"y_{name}"] = y[rows]
    arrays["y_ood"] = np.zeros(len(split_texts["ood"]), dtype=np.int64)

    row_index = reviews["index"].to_numpy(dtype=np.int64)  # 0-based data rows of the corpus file
    balance = ", ".join(f"{n} {float(arrays[f'y_{n}'].mean()):.3f}" for n in ("train", "val", "test"))
    sizes = ", ".join(f"{n} {len(t)}" for n, t in split_texts.items())
    description = (
        f"Rotten Tomatoes review snippets ({CORPUS_FILE}): fresh (1) vs rotten (0); "
        f"{len(reviews)} of {n_reviews_read} snippets kept after dropping duplicate texts and texts with "
        f"both labels. Split 70/15/15 by movie (all snippets of a movie in one split, stratified by the "
        f"movie's majority label) with seed {seed}; fresh share per split: {balance}. Word tokenizer "
        f"fitted on the training texts: {tokenizer.vocab_size} ids (min frequency {min_freq}, at most "
        f"{max_vocab}), max length {max_len} with [CLS]. Far-OOD = Guardian headlines ({HEADLINES_FILE}); "
        f"near-OOD = the corpus's plot summaries. Sizes: {sizes}."
    )
    return TextSplits(
        **arrays,
        preprocessor=tokenizer,  # type: ignore[arg-type]
        feature_names=[f"token_{i}" for i in range(max_len)],
        task="binary",
        target_name="sentiment",
        description=description,
        dataset="rotten_tomatoes",
        label_names=list(LABEL_NAMES),
        source_rows={
            name: row_index[rows] for name, rows in (("train", train), ("val", val), ("test", test))
        },
        texts=split_texts,
    )

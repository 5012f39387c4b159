"""A word-level tokenizer for the text tasks, fitted on the training split and stored in the checkpoint.

Text is lowercased and split by one regular expression into words (letters, digits and inner
apostrophes, so "isn't" stays one token) and single punctuation marks. The vocabulary keeps the words
seen at least ``min_freq`` times in the training texts, most frequent first (ties broken alphabetically,
so the same training texts always give the same ids), up to ``max_size`` entries including the special
tokens ``[PAD]`` = 0, ``[UNK]`` = 1 and ``[CLS]`` = 2.

``encode`` puts ``[CLS]`` first (the encoder pools its output), truncates to ``max_len`` ids in total
and right-pads with ``[PAD]``; the model relies on padding being on the right.

Pure Python + numpy (no torch): the server replays it per request from the manifest's ``input_schema``
(``kind: "text"``), via :meth:`WordTokenizer.to_dict` / :meth:`WordTokenizer.from_dict`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["CLS", "CLS_ID", "PAD", "PAD_ID", "SPECIAL_TOKENS", "UNK", "UNK_ID", "WordTokenizer", "words"]

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
PAD_ID, UNK_ID, CLS_ID = 0, 1, 2
SPECIAL_TOKENS = (PAD, UNK, CLS)
TOKENIZER_KIND = "word-v1"

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lowercased word and punctuation tokens of one text."""
    return _TOKEN_RE.findall(str(text).lower())


class WordTokenizer:
    """Word-level vocabulary + [CLS]/[PAD]/[UNK] encoding to fixed-length int64 id arrays."""

    def __init__(self, vocab: Sequence[str], max_len: int = 64, lowercase: bool = True) -> None:
        if tuple(vocab[:3]) != SPECIAL_TOKENS:
            raise ValueError(f"the vocabulary must start with {SPECIAL_TOKENS}, got {tuple(vocab[:3])}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has duplicate entries")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 ([CLS] plus one token), got {max_len}")
        if not lowercase:
            raise ValueError("only the lowercasing tokenizer is implemented")
        self.vocab = list(vocab)
        self.max_len = int(max_len)
        self.lowercase = lowercase
        self.index = {word: i for i, word in enumerate(self.vocab)}

    # -- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls, texts: Iterable[str], min_freq: int = 2, max_size: int = 20_000, max_len: int = 64
    ) -> WordTokenizer:
        """Vocabulary from ``texts`` (pass the training split only)."""
        if max_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"max_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(words(text))
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([*SPECIAL_TOKENS, *kept[: max_size - len(SPECIAL_TOKENS)]], max_len=max_len)

    # -- encoding ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def n_outputs(self) -> int:
        """Model input width: ids per text (what ``TabularSplits.n_features`` reports)."""
        return self.max_len

    def ids(self, text: str) -> list[int]:
        """[CLS] + word ids, truncated to ``max_len`` (no padding)."""
        get = self.index.get
        body = [get(w, UNK_ID) for w in words(text)[: self.max_len - 1]]
        return [CLS_ID, *body]

    def encode(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (N, max_len) right-padded with [PAD], lengths int64 (N,) counting [CLS])."""
        rows = [self.ids(t) for t in texts]
        out = np.full((len(rows), self.max_len), PAD_ID, dtype=np.int64)
        lengths = np.zeros(len(rows), dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
            lengths[i] = len(row)
        return out, lengths

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Tokens of one id row, padding dropped (for inspection and tests)."""
        return [self.vocab[int(i)] for i in ids if int(i) != PAD_ID]

    def unknown_rate(self, texts: Iterable[str]) -> float:
        """Fraction of word tokens (before truncation) that map to [UNK]."""
        total = unknown = 0
        for text in texts:
            toks = words(text)
            total += len(toks)
            unknown += sum(1 for w in toks if w not in self.index)
        return unknown / total if total else 0.0

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (the manifest's ``input_schema.preprocessing``)."""
        return {
            "kind": TOKENIZER_KIND,
            "lowercase": self.lowercase,
            "max_len": self.max_len,
            "pad_id": PAD_ID,
            "unk_id": UNK_ID,
            "cls_id": CLS_ID,
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        if data.get("kind") != TOKENIZER_KIND:
            raise ValueError(f"not a {TOKENIZER_KIND!r} tokenizer: kind {data.get('kind')!r}")
        ids = (data.get("pad_id"), data.get("unk_id"), data.get("cls_id"))
        if ids != (PAD_ID, UNK_ID, CLS_ID):
            raise ValueError(f"special token ids {ids} differ from {(PAD_ID, UNK_ID, CLS_ID)}")
        return cls(list(data["vocab"]), max_len=int(data["max_len"]), lowercase=bool(data["lowercase"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, max_len={self.max_len})"

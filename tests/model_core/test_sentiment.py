"""Sentiment task: word tokenizer, Rotten Tomatoes loader (generated bz2 files), real data, end to end."""

from __future__ import annotations

import bz2
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from model_core.data import TASK_LOADERS
from model_core.data.sentiment import (
    CORPUS_FILE,
    HEADLINES_FILE,
    LABEL_NAMES,
    TextSplits,
    load_sentiment,
    movie_split,
)
from model_core.data.tokenizer import CLS_ID, PAD_ID, UNK_ID, WordTokenizer, words

POSITIVE = ["great", "wonderful", "moving", "superb", "funny", "charming"]
NEGATIVE = ["dull", "awful", "boring", "clumsy", "tedious", "lifeless"]
FILLER = ["the", "film", "is", "a", "story", "with", "cast", "and", "plot", "its"]


def _write_bz2_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(buf.getvalue().encode()))


def make_sentiment_dir(root: Path, movies: int = 40, per_movie: int = 6, seed: int = 0) -> Path:
    """A small data dir in the shared layout: corpus (fresh/rotten/plot, one unique word per movie)
    and Guardian-like headlines."""
    rng = np.random.default_rng(seed)
    corpus: list[list[object]] = []
    for m in range(movies):
        name = f"Movie {m}"
        for k in range(per_movie):
            fresh = rng.random() < 0.55
            sentiment = rng.choice(POSITIVE if fresh else NEGATIVE, 2)
            body = [*rng.choice(FILLER, 5), *sentiment, f"moviename{m}"]
            rng.shuffle(body)
            corpus.append(["fresh" if fresh else "rotten", " ".join(body) + f" #{k}.", name, True])
        corpus.append(["plot", f"A family moves to town{m} and discovers a secret in the house.", name, True])
    corpus.append(["fresh", "", "Movie 0", True])  # a missing text (read back as NaN)
    corpus.append(["fresh", "exactly the same words", "Movie 1", True])  # duplicate, one label
    corpus.append(["fresh", "exactly the same words", "Movie 2", True])
    corpus.append(["fresh", "conflicting snippet", "Movie 3", True])  # both labels: dropped
    corpus.append(["rotten", "conflicting snippet", "Movie 4", True])
    _write_bz2_csv(root / CORPUS_FILE, ["category", "text", "movie_name", "has_plot_and_reviews"], corpus)
    headlines = [
        [i, f"Minister announces budget plan number {i} for railways", "2020-07-18"] for i in range(30)
    ]
    _write_bz2_csv(root / HEADLINES_FILE, ["", "Text", "Date"], headlines)
    return root


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sentiment_dir(tmp_path_factory.mktemp("sentiment"))


# -- tokenizer -----------------------------------------------------------------------------------
def test_words_lowercase_and_split_punctuation() -> None:
    assert words("It's GREAT, isn't it?!") == ["it's", "great", ",", "isn't", "it", "?", "!"]


def test_tokenizer_fits_on_given_texts_only_and_maps_unseen_words_to_unk() -> None:
    train = ["a good film", "a good cast", "bad film"]
    tok = WordTokenizer.fit(train, min_freq=2, max_len=8)
    assert tok.vocab[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert set(tok.vocab[3:]) == {"a", "good", "film"}  # "cast", "bad" appear once
    ids, lengths = tok.encode(["a good movie", "BAD film"])
    assert ids.dtype == np.int64 and ids.shape == (2, 8) and lengths.tolist() == [4, 3]
    assert ids[0, 0] == CLS_ID and ids[0, 3] == UNK_ID  # "movie" unseen
    assert ids[1, 1] == UNK_ID  # "bad" below min_freq
    assert (ids[0, 4:] == PAD_ID).all()
    assert tok.decode(ids[0]) == ["[CLS]", "a", "good", "[UNK]"]


def test_tokenizer_orders_by_frequency_then_alphabet_and_caps_size() -> None:
    tok = WordTokenizer.fit(["b b b a a c c d"], min_freq=1, max_size=5)
    assert tok.vocab == ["[PAD]", "[UNK]", "[CLS]", "b", "a"]  # a, c tie at 2: alphabetical


def test_tokenizer_truncates_to_max_len_with_cls() -> None:
    tok = WordTokenizer.fit(["one two three four five six"], min_freq=1, max_len=4)
    ids, lengths = tok.encode(["one two three four five six"])
    assert ids.shape == (1, 4) and lengths.tolist() == [4]
    assert tok.decode(ids[0]) == ["[CLS]", "one", "two", "three"]


def test_tokenizer_round_trips_through_json() -> None:
    tok = WordTokenizer.fit(["x y z y"], min_freq=1, max_len=6)
    data = json.loads(json.dumps(tok.to_dict()))
    back = WordTokenizer.from_dict(data)
    assert back == tok and back.max_len == 6
    texts = ["z y unknown", "x"]
    assert (back.encode(texts)[0] == tok.encode(texts)[0]).all()
    with pytest.raises(ValueError, match="kind"):
        WordTokenizer.from_dict({**data, "kind": "bpe"})
    with pytest.raises(ValueError, match="start with"):
        WordTokenizer(["a", "b", "c"])


# -- loader --------------------------------------------------------------------------------------
def test_movie_split_keeps_movies_whole_and_fractions_close() -> None:
    rng = np.random.default_rng(0)
    movies = np.repeat(np.arange(200), rng.integers(1, 10, 200)).astype(str)
    labels = rng.integers(0, 2, len(movies))
    train, val, test = movie_split(movies, labels, seed=3)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(movies)))
    sets = [set(movies[p]) for p in (train, val, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert abs(len(train) / len(movies) - 0.70) < 0.05 and abs(len(test) / len(movies) - 0.15) < 0.05
    again = movie_split(movies, labels, seed=3)
    assert all((a == b).all() for a, b in zip(again, (train, val, test), strict=True))


def test_load_sentiment_on_generated_files(sentiment_dir: Path) -> None:
    s = load_sentiment(sentiment_dir, seed=0, max_len=16)
    assert isinstance(s, TextSplits) and s.task == "binary" and s.label_names == LABEL_NAMES
    n_reviews = 40 * 6 + 1  # one of the duplicates kept, the conflicting pair and the empty text dropped
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == n_reviews
    assert 0.6 < len(s.y_train) / n_reviews < 0.8
    for split in ("train", "val", "test", "ood", "near_ood"):
        x = getattr(s, f"x_{split}")
        assert x.dtype == np.int64 and x.shape[1] == 16 and (x[:, 0] == CLS_ID).all()
    assert len(s.x_ood) == 30 and (s.y_ood == 0).all()
    assert len(s.x_near_ood) == 40  # plot summaries
    assert s.sizes["ood_near"] == 40 and s.n_features == 16
    # no text and no movie in two splits
    texts = {k: set(s.texts[k]) for k in ("train", "val", "test")}
    assert not (
        texts["train"] & texts["test"] or texts["train"] & texts["val"] or texts["val"] & texts["test"]
    )
    movie_words = {k: {w for t in s.texts[k] for w in words(t) if w.startswith("moviename")} for k in texts}
    assert not (movie_words["train"] & movie_words["test"] or movie_words["train"] & movie_words["val"])
    # the tokenizer saw the training texts only: a test movie's unique word is [UNK] there
    assert all(w not in s.tokenizer.index for w in movie_words["test"] | movie_words["val"])
    assert all(
        w in s.tokenizer.index for w in movie_words["train"] if sum(w in t for t in s.texts["train"]) > 1
    )
    # labels: fresh = 1
    fresh_words = set(POSITIVE)
    for text, label in zip(s.texts["train"], s.y_train, strict=True):
        assert (len(fresh_words & set(words(text))) > 0) == (label == 1)
    assert "[CLS]" in s.tokenizer.to_dict()["vocab"]
    assert "sentiment" in TASK_LOADERS


def test_load_sentiment_is_seeded(sentiment_dir: Path) -> None:
    a, b = load_sentiment(sentiment_dir, seed=1), load_sentiment(sentiment_dir, seed=1)
    c = load_sentiment(sentiment_dir, seed=2)
    assert (a.x_train == b.x_train).all() and a.texts["test"] == b.texts["test"]
    assert a.texts["test"] != c.texts["test"]


def test_load_sentiment_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="rotten_tomatoes"):
        load_sentiment(tmp_path)


@pytest.mark.slow
@pytest.mark.realdata
def test_real_rotten_tomatoes(data_dir: Path) -> None:
    if not (data_dir / CORPUS_FILE).is_file() or not (data_dir / HEADLINES_FILE).is_file():
        pytest.skip("rotten_tomatoes files are not in the data dir")
    s = load_sentiment(data_dir, seed=0)
    total = len(s.y_train) + len(s.y_val) + len(s.y_test)
    assert 12_700 <= total <= 12_808  # 7,403 fresh + 5,405 rotten less duplicates
    assert abs(len(s.y_train) / total - 0.70) < 0.02 and abs(len(s.y_test) / total - 0.15) < 0.02
    assert len(s.x_ood) == 4_080 and 1_080 <= len(s.x_near_ood) <= 1_097
    assert 0.55 < s.y_train.mean() < 0.61 and abs(s.y_test.mean() - s.y_train.mean()) < 0.03
    assert 5_000 < s.tokenizer.vocab_size <= 20_000


# -- end to end ----------------------------------------------------------------------------------
def test_train_and_evaluate_sentiment_cli(
    sentiment_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_core.checkpoint import load_checkpoint
    from model_core.cli.main import main

    out = tmp_path / "ckpt"
    data = ["--data-dir", str(sentiment_dir)]
    args = ["--method", "lowrank", "--epochs", "1", "--samples", "4", "--batch-size", "64", "--no-progress"]
    assert main(["train", "--task", "sentiment", *data, *args, "--out", str(out)]) == 0
    manifest = load_checkpoint(out).manifest
    capsys.readouterr()
    assert manifest.input_schema.kind == "text"
    tok = WordTokenizer.from_dict(manifest.input_schema.preprocessing)
    assert tok.vocab_size == manifest.architecture.extra["vocab_size"]
    assert manifest.architecture.kind == "transformer" and manifest.architecture.rank == 16
    metrics = manifest.training["metrics"]
    assert {"test", "ood", "ood_near"} <= set(metrics)
    assert main(["evaluate", str(out), "--json", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ood_near"]["ood_auroc"] == pytest.approx(metrics["ood_near"]["ood_auroc"])
    assert report["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert report["split_sizes"]["ood_near"] == 40


def test_train_options_for_the_text_model_reach_the_manifest_and_evaluate(
    sentiment_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--d-model/--layers/--heads/--ff/--pooling/--eta/--kl-warmup reach the spec and the training
    options; the tokenizer flags are recorded as training.data_options, and ``evaluate`` rebuilds the
    splits with them (a vocabulary of another size would not even load the test ids correctly)."""
    from model_core.checkpoint import load_checkpoint
    from model_core.cli.main import main

    out = tmp_path / "small"
    data = ["--data-dir", str(sentiment_dir)]
    size = ["--d-model", "16", "--layers", "1", "--heads", "2", "--ff", "32", "--pooling", "mean"]
    recipe = ["--eta", "0.05", "--kl-warmup", "2", "--min-freq", "1", "--max-vocab", "60", "--max-len", "12"]
    args = ["--epochs", "2", "--samples", "4", "--batch-size", "64", "--no-progress", *size, *recipe]
    assert main(["train", "--task", "sentiment", *data, *args, "--out", str(out)]) == 0
    manifest = load_checkpoint(out).manifest
    capsys.readouterr()
    extra = manifest.architecture.extra
    assert {k: extra[k] for k in ("d_model", "n_layers", "n_heads", "d_ff", "pooling", "eta", "max_len")} == {
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
        "d_ff": 32,
        "pooling": "mean",
        "eta": 0.05,
        "max_len": 12,
    }
    assert extra["vocab_size"] == 60  # min frequency 1 keeps more words than the cap
    training = manifest.training
    assert training["data_options"] == {"min_freq": 1, "max_vocab": 60, "max_len": 12}
    assert training["options"]["kl_warmup"] == 2 and training["options"]["pooling"] == "mean"
    assert [row["kl_weight"] for row in training["history"]] == [0.5, 1.0]
    assert main(["evaluate", str(out), "--json", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test"]["nll"] == pytest.approx(training["metrics"]["test"]["nll"])
    assert report["ood_near"]["ood_auroc"] == pytest.approx(training["metrics"]["ood_near"]["ood_auroc"])


def test_train_help_describes_the_text_options(capsys: pytest.CaptureFixture[str]) -> None:
    from model_core.cli.main import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    flags = ("--d-model", "--layers", "--heads", "--ff", "--pooling", "--eta", "--kl-warmup", "--min-freq")
    assert all(flag in text for flag in flags)
    assert "text tasks (--task sentiment)" in text

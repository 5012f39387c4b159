"""Input novelty (``model_core.novelty``): the distance, its feature maps, persistence and verification.

The detector is a Ledoit-Wolf Mahalanobis distance; it is checked against scikit-learn's own
``LedoitWolf().mahalanobis`` (which returns the squared distance), against its geometry (zero at the
training mean, linear along a ray) and for robustness (a 1e300 input). The checkpoint half checks that
``load_novelty`` refuses, with an :class:`IntegrityError` naming the reason, every way the file can be
wrong: missing, bytes changed (sha256), and a file whose sha256 was re-recorded in the manifest but whose
arrays are unreadable, of the wrong dimension or non-finite.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from model_core.checkpoint import IntegrityError, load_checkpoint
from model_core.checkpoint.files import load_novelty, read_manifest, sha256_file
from model_core.data import load_csv
from model_core.data.dataset import TabularSplits
from model_core.layers.base import BayesianModule
from model_core.models import Method, build_model
from model_core.models.transformer import transformer_spec
from model_core.novelty import (
    INPUT_CAP,
    NOVELTY_FILE,
    REF_LEVEL,
    TAIL_FLOOR,
    TAIL_LEVEL,
    TAIL_OFFSET,
    NoveltyDetector,
    NoveltyFeatures,
    TailScore,
    fit_novelty,
)
from model_core.predict import predict
from model_core.training.pipeline import split_calibration


def _gaussian(rng: np.random.Generator, n: int = 600, d: int = 5) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + np.arange(d, dtype=np.float64) * 3.0


def test_score_matches_sklearn_ledoit_wolf_mahalanobis() -> None:
    """score(Y) == sqrt(LedoitWolf().fit(X).mahalanobis(Y)) to 1e-9 relative (same estimator, same
    quadratic form; only the summation order differs), for points near and far from the data."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(20)
    x = _gaussian(rng)
    det = fit_novelty("tabular", x)
    assert det.features is NoveltyFeatures.INPUTS and det.dim == x.shape[1]
    y = np.concatenate([_gaussian(rng, 50), x[:5] * 10.0, rng.normal(size=(5, 5)) * 1e3])
    expected = np.sqrt(LedoitWolf().fit(x).mahalanobis(y))
    np.testing.assert_allclose(det.score(y), expected, rtol=1e-9)
    assert det.score(y).dtype == np.float64 and det.score(y).shape == (len(y),)


def test_score_is_zero_at_the_training_mean_and_grows_linearly_along_a_ray() -> None:
    """The training mean scores 0 (|score| < 1e-6: the centre of the fitted Gaussian), and along a ray
    mean + s·u the score is s times the score at s = 1 (a norm), so strictly increasing in s."""
    rng = np.random.default_rng(21)
    x = _gaussian(rng)
    det = fit_novelty("tabular", x)
    centre = x.mean(0, keepdims=True)
    assert det.score(centre)[0] < 1e-6
    for _ in range(5):
        u = rng.normal(size=x.shape[1])
        s = np.array([0.5, 1.0, 2.0, 4.0, 16.0])
        scores = det.score(centre + s[:, None] * u)
        assert (np.diff(scores) > 0).all()
        np.testing.assert_allclose(scores, s * scores[1], rtol=1e-7)
    # a typical training point scores around sqrt(d); a far one much more
    typical = float(np.median(det.score(x)))
    assert 0.5 * math.sqrt(x.shape[1]) < typical < 2 * math.sqrt(x.shape[1])


def test_huge_input_gives_a_large_finite_score() -> None:
    """1e300 (a finite double a client may send) and -1e300 give a finite score above every training
    score and at least the score of the input capped at INPUT_CAP (what the cap does), not inf or NaN."""
    rng = np.random.default_rng(22)
    x = _gaussian(rng)
    det = fit_novelty("tabular", x)
    row = x[:1].copy()
    for value in (1e300, -1e300, np.finfo(np.float64).max):
        bad = row.copy()
        bad[0, 2] = value
        s = det.score(bad)[0]
        assert math.isfinite(s)
        assert s > det.score(x).max() * 100
        capped = row.copy()
        capped[0, 2] = math.copysign(INPUT_CAP, value)
        assert s == pytest.approx(det.score(capped)[0], rel=1e-12)
    both = row.copy()
    both[0, :2] = (1e300, -1e300)
    assert math.isfinite(det.score(both)[0])


def test_window_summary_features_and_shape() -> None:
    """Sequences: (n, window, width) -> features mean/std/min/max per input (dim 4·width); the score
    equals LedoitWolf's Mahalanobis distance on those summaries; a 2-D input is refused."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(23)
    n, window, width = 300, 12, 3
    w = rng.normal(size=(n, window, width)).cumsum(1)
    det = fit_novelty("sequence", w)
    assert det.features is NoveltyFeatures.WINDOW_SUMMARY and det.dim == 4 * width
    test = rng.normal(size=(7, window, width)).cumsum(1)
    test[0, :, 1] = test[0, 0, 1]  # a stuck sensor: no spread
    summ = lambda a: np.concatenate([a.mean(1), a.std(1), a.min(1), a.max(1)], axis=1)  # noqa: E731
    expected = np.sqrt(LedoitWolf().fit(summ(w)).mahalanobis(summ(test)))
    got = det.score(test)
    assert got.shape == (7,)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    with pytest.raises(ValueError, match="window"):
        det.score(w[:, 0, :])


@pytest.fixture(scope="module")
def text_model() -> BayesianModule:
    torch.manual_seed(0)
    spec = transformer_spec(
        Method.LOWRANK, vocab_size=60, max_len=10, rank=4, d_model=32, n_layers=1, n_heads=2, d_ff=32
    )
    return build_model(spec)


def test_a_text_ensemble_fits_on_its_first_members_embedding() -> None:
    """``lrbnn train --task sentiment --method lowrank-ens`` fits a detector (it crashed: an ensemble has
    no ``embed`` of its own), and the table is exactly the first member's."""
    torch.manual_seed(1)
    spec = transformer_spec(
        Method.LOWRANK_ENS,
        vocab_size=60,
        max_len=10,
        rank=4,
        members=2,
        d_model=32,
        n_layers=1,
        n_heads=2,
        d_ff=32,
    )
    ensemble = build_model(spec)
    ids = np.random.default_rng(3).integers(1, 60, size=(100, 10))
    det = fit_novelty("text", ids, model=ensemble, pad_id=0)
    alone = fit_novelty("text", ids, model=ensemble.members[0], pad_id=0)  # type: ignore[index]
    np.testing.assert_array_equal(det.extra["embedding"], alone.extra["embedding"])
    assert np.isfinite(det.score(ids[:5])).all()


def test_token_embedding_shape_and_padding_ignored(text_model: BayesianModule) -> None:
    """Text: the feature is the mean projected embedding of a text's non-pad tokens (dim 16 = the kept
    principal directions); appending or prepending pad ids does not change the score, a text of pads
    only is finite, and an out-of-vocabulary id does not crash. Without the model, fitting is refused."""
    rng = np.random.default_rng(24)
    ids = rng.integers(1, 60, size=(200, 10))
    ids[:, 7:] = 0  # padding
    det = fit_novelty("text", ids, model=text_model, pad_id=0)
    assert det.features is NoveltyFeatures.TOKEN_EMBEDDING
    assert det.dim == 16 and det.extra["embedding"].shape == (60, 16)
    short = ids[:20, :7]
    padded_right = np.concatenate([short, np.zeros((20, 5), dtype=short.dtype)], axis=1)
    padded_left = np.concatenate([np.zeros((20, 3), dtype=short.dtype), short], axis=1)
    base = det.score(short)
    assert base.shape == (20,)
    np.testing.assert_allclose(det.score(padded_right), base, rtol=1e-12)
    np.testing.assert_allclose(det.score(padded_left), base, rtol=1e-12)
    # the feature really is the mean of the non-pad rows of the table
    table = det.extra["embedding"].astype(np.float64)
    f = table[short].mean(1)
    diff = f - det.loc
    np.testing.assert_allclose(base, np.sqrt(np.einsum("nd,de,ne->n", diff, det.precision, diff)), rtol=1e-9)
    assert np.isfinite(det.score(np.zeros((2, 10), dtype=np.int64))).all()
    assert np.isfinite(det.score(np.array([[5, 10_000, -3, 0]]))).all()
    with pytest.raises(ValueError, match="model"):
        fit_novelty("text", ids)
    with pytest.raises(ValueError, match="token ids"):
        det.score(ids[0])


def _roundtrip(det: NoveltyDetector, directory: Path) -> NoveltyDetector:
    path = det.save(directory)
    assert path == directory / NOVELTY_FILE
    return NoveltyDetector.from_tensors(det.features, load_file(str(path)), det.meta)


def test_save_from_tensors_round_trip_gives_identical_scores(
    tmp_path: Path, text_model: BayesianModule
) -> None:
    """For all three feature maps, save -> load_file -> from_tensors scores bitwise like the original."""
    rng = np.random.default_rng(25)
    x = _gaussian(rng)
    w = rng.normal(size=(100, 8, 2))
    ids = rng.integers(0, 60, size=(100, 10))
    cases = [
        (fit_novelty("tabular", x), x[:30] * 2),
        (fit_novelty("sequence", w), w[:30] + 1),
        (fit_novelty("text", ids, model=text_model, pad_id=0), ids[:30]),
    ]
    for i, (det, probe) in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        back = _roundtrip(det, d)
        assert back.features is det.features and back.dim == det.dim and back.meta == det.meta
        np.testing.assert_array_equal(back.score(probe), det.score(probe))
        assert not (d / (NOVELTY_FILE.replace(".safetensors", ".tmp"))).exists()


def test_from_tensors_refuses_bad_arrays() -> None:
    """Missing arrays, mismatched shapes, a text detector without its table, and NaN are ValueErrors."""
    loc, prec = np.zeros(3), np.eye(3)
    f = NoveltyFeatures.INPUTS
    with pytest.raises(ValueError, match="lack"):
        NoveltyDetector.from_tensors(f, {"loc": loc}, {})
    with pytest.raises(ValueError, match="do not match"):
        NoveltyDetector.from_tensors(f, {"loc": loc, "precision": np.eye(4)}, {})
    with pytest.raises(ValueError, match="do not match"):
        NoveltyDetector.from_tensors(f, {"loc": np.zeros((3, 1)), "precision": prec}, {})
    with pytest.raises(ValueError, match="embedding"):
        NoveltyDetector.from_tensors(NoveltyFeatures.TOKEN_EMBEDDING, {"loc": loc, "precision": prec}, {})
    with pytest.raises(ValueError, match="embedding"):
        NoveltyDetector.from_tensors(
            NoveltyFeatures.TOKEN_EMBEDDING,
            {"loc": loc, "precision": prec, "embedding": np.zeros((5, 4))},
            {},
        )
    bad = prec.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        NoveltyDetector.from_tensors(f, {"loc": loc, "precision": bad}, {})
    with pytest.raises(ValueError, match="non-finite"):
        NoveltyDetector.from_tensors(f, {"loc": np.array([0.0, np.inf, 0.0]), "precision": prec}, {})


# ------------------------------------------------------------------------------------- tail score


def _skewed(rng: np.random.Generator, n: int = 2000) -> np.ndarray:
    """Three numeric columns (one heavily skewed, like a lab value) and a 0/1 indicator column, min-max
    scaled to [0, 1] as the preprocessor scales a training split."""
    lab = rng.lognormal(mean=0.0, sigma=0.6, size=n)
    x = np.column_stack([rng.normal(size=n), 5.0 + lab, rng.normal(size=n) * 3.0]).astype(np.float64)
    x = (x - x.min(0)) / np.ptp(x, axis=0)
    return np.column_stack([x, rng.integers(0, 2, size=n)]).astype(np.float64)


def _inverse_axis(a: np.ndarray, offset: float) -> np.ndarray:
    """The scaled value whose tail axis is ``a`` (the inverse of ``TailScore.axis``)."""
    return np.where(a >= math.log(offset), np.exp(a) - offset, (a - math.log(offset)) * offset)


def test_tail_axis_is_log_above_zero_linear_below_monotone_and_continuous() -> None:
    """axis(z) = log(z + offset) for z >= 0 and log(offset) + z / offset below (to 1e-12), strictly
    increasing over [-5, 50], continuous at 0, and a unit factor (x 10) is one shift log(10) for values
    far above the offset (within 1 %: the offset is 1 % of the training range)."""
    tail = TailScore(np.array([0]), np.zeros(1), np.ones(1), np.ones(1), TAIL_OFFSET)
    z = np.linspace(-5.0, 50.0, 20001)
    a = tail.axis(z[:, None])[:, 0]
    assert (np.diff(a) > 0).all()
    np.testing.assert_allclose(a[z >= 0], np.log(z[z >= 0] + TAIL_OFFSET), rtol=1e-12)
    np.testing.assert_allclose(a[z < 0], math.log(TAIL_OFFSET) + z[z < 0] / TAIL_OFFSET, rtol=1e-12)
    near = tail.axis(np.array([[-1e-12], [0.0], [1e-12]]))[:, 0]
    assert np.ptp(near) < 1e-9
    big = np.array([[2.0], [20.0]])
    shift = float(np.diff(tail.axis(big)[:, 0])[0])
    assert shift == pytest.approx(math.log(10.0), rel=0.01)


def test_tail_score_is_the_distance_in_units_of_each_sides_training_quantile() -> None:
    """Known answer: the tail units are the training median's distance (on the tail axis) to its
    0.5 % / 99.5 % quantile (numpy's own quantile, to 1e-12); a row whose one column lies k units above
    the median (the others at the median) scores k (to 1e-9), k units below also k, and columns not
    listed are never read."""
    rng = np.random.default_rng(30)
    x = _skewed(rng)
    cols = np.array([0, 1, 2])
    tail = TailScore.fit(x, cols)
    t = tail.axis(x)
    np.testing.assert_allclose(tail.center, np.median(t, 0), rtol=1e-12)
    np.testing.assert_allclose(tail.upper, np.quantile(t, 1 - TAIL_LEVEL, 0) - tail.center, rtol=1e-12)
    np.testing.assert_allclose(tail.lower, tail.center - np.quantile(t, TAIL_LEVEL, 0), rtol=1e-12)
    centre_row = np.r_[_inverse_axis(tail.center, tail.offset), 0.0]
    for j in range(3):
        for k in (0.5, 1.0, 3.0, 40.0):
            row = centre_row[None, :].copy()
            row[0, j] = _inverse_axis(tail.center[j] + k * tail.upper[j], tail.offset)
            assert tail.score(row)[0] == pytest.approx(k, rel=1e-9)
            row[0, j] = _inverse_axis(tail.center[j] - k * tail.lower[j], tail.offset)
            assert tail.score(row)[0] == pytest.approx(k, rel=1e-9)
    row = np.r_[centre_row[:3], 1e6][None, :]
    assert tail.score(row)[0] == pytest.approx(0.0, abs=1e-9)  # the indicator column is not read
    # about 1 % of training rows lie beyond one side's unit in a given column (0.5 % on each side)
    beyond = (np.abs(t - tail.center) > np.where(t > tail.center, tail.upper, tail.lower)).mean(0)
    assert np.all(beyond <= 2 * TAIL_LEVEL + 1e-9)


def test_the_served_tail_formula_equals_the_literal_one_on_both_branches() -> None:
    """``score`` meets both sides' units in one product over the branch-free axis: it agrees with
    max((axis - center) / upper, (center - axis) / lower) to 1e-12, on a batch without and with a
    negative (below-minimum) value, and a value below the minimum scores above the minimum itself."""
    rng = np.random.default_rng(35)
    x = _skewed(rng)
    tail = TailScore.fit(x, np.array([0, 1, 2]))
    probe = np.concatenate([x[:200], x[:50] * 3.0])
    for batch in (probe, np.concatenate([probe, [[-0.2, 0.5, 0.5, 1.0]]])):
        t = tail.axis(batch) - tail.center
        literal = np.maximum(t / tail.upper, -t / tail.lower).max(axis=1)
        np.testing.assert_allclose(tail.score(batch), literal, rtol=1e-12, atol=1e-12)
    assert tail.score(np.array([[-0.2, 0.5, 0.5, 1.0]]))[0] > tail.score(np.array([[0.0, 0.5, 0.5, 1.0]]))[0]


def test_a_zero_inflated_column_gets_a_floored_unit_not_zero() -> None:
    """A column that is 0 for 99 % of rows has no lower tail: its lower unit is TAIL_FLOOR of the two
    sides' sum, so a value just below 0 scores finitely (not inf)."""
    rng = np.random.default_rng(31)
    col = np.where(rng.random(3000) < 0.99, 0.0, rng.uniform(0.2, 1.0, 3000))
    tail = TailScore.fit(col[:, None], np.array([0]))
    assert tail.lower[0] == pytest.approx(TAIL_FLOOR * (tail.upper[0] + 0.0), rel=1e-12)
    assert tail.lower[0] > 0
    assert math.isfinite(tail.score(np.array([[-0.01]]))[0])


def test_with_tail_columns_the_score_is_the_sum_of_both_components_over_their_refs() -> None:
    """score = distance / refs[0] + tail / refs[1] to 1e-12; refs are the training REF_LEVEL
    quantiles of each component; without tail columns the score stays the distance alone."""
    rng = np.random.default_rng(32)
    x = _skewed(rng)
    plain = fit_novelty("tabular", x)
    det = fit_novelty("tabular", x, tail_columns=np.array([0, 1, 2]))
    assert plain.tail is None and det.tail is not None and det.refs is not None
    dist, tail = plain.score(x), det.tail.score(x)
    np.testing.assert_allclose(det.refs, [np.quantile(dist, REF_LEVEL), np.quantile(tail, REF_LEVEL)])
    probe = np.concatenate([x[:50], x[:5] * 4.0])
    expected = plain.score(probe) / det.refs[0] + det.tail.score(probe) / det.refs[1]
    np.testing.assert_allclose(det.score(probe), expected, rtol=1e-12)
    np.testing.assert_array_equal(fit_novelty("tabular", x, tail_columns=np.array([], int)).score(x), dist)


def test_a_one_feature_unit_error_inside_the_range_is_caught_by_the_tail_not_the_distance() -> None:
    """A lab value divided by 18 (glucose in mmol/L) stays inside the column's training range and
    moves the Mahalanobis distance little, but lies far below the training 0.5 % quantile: at the
    training 95th percentile of each score, the tail-augmented score flags nearly all such rows (>= 90 %)
    and the distance alone flags fewer than half as many. The numbers are random draws of a fixed seed;
    the bounds hold with a wide margin for any seed (the effect is an order of magnitude)."""
    rng = np.random.default_rng(33)
    n = 3000
    mu = 4.9 + rng.normal(size=n) * 0.35  # log glucose around 135 mg/dL
    x = np.column_stack([np.exp(mu), rng.normal(size=(n, 5)) @ rng.normal(size=(5, 5))])
    x[: n // 200, 0] = rng.uniform(0.0, 30.0, size=n // 200)  # the rare real low values
    x[0, 0] = 0.0  # SUPPORT2's glucose goes down to 0
    x = x / np.abs(x).max(0)  # min-max-like scaling: the column spans [0, 1]
    cols = np.arange(x.shape[1])
    plain = fit_novelty("tabular", x)
    det = fit_novelty("tabular", x, tail_columns=cols)
    shifted = x[n // 200 : n // 200 + 500].copy()
    shifted[:, 0] /= 18.016
    assert shifted[:, 0].min() >= x[:, 0].min()  # inside the training range
    rate = lambda d: float((d.score(shifted) > np.quantile(d.score(x), 0.95)).mean())  # noqa: E731
    assert rate(det) >= 0.90
    assert rate(plain) < 0.5 * rate(det)


def test_tail_round_trip_and_refusal_of_bad_tail_arrays(tmp_path: Path) -> None:
    """save -> from_tensors scores bitwise like the original with its tail; an incomplete tail, a column
    out of range or not an integer, a unit <= 0, refs of the wrong shape or <= 0, a length mismatch and a
    NaN are each refused with a ValueError naming the defect."""
    rng = np.random.default_rng(34)
    x = _skewed(rng)
    det = fit_novelty("tabular", x, tail_columns=np.array([0, 1, 2]))
    back = _roundtrip(det, tmp_path)
    assert back.tail is not None
    np.testing.assert_array_equal(back.score(x * 1.5), det.score(x * 1.5))
    good = det.tensors()

    def refused(change: dict[str, np.ndarray], match: str, drop: str | None = None) -> None:
        bad = {**good, **change}
        if drop:
            del bad[drop]
        with pytest.raises(ValueError, match=match):
            NoveltyDetector.from_tensors(NoveltyFeatures.INPUTS, bad, {})

    refused({}, "incomplete", drop="tail_upper")
    refused({}, "incomplete", drop="refs")
    refused({}, "incomplete", drop="tail_offset")
    refused({"tail_offset": np.array([0.0])}, "offset")
    refused({"tail_offset": np.array([0.01, 0.01])}, "offset")
    refused({"tail_columns": np.array([0, 1, 4])}, r"\[0, 4\)")
    refused({"tail_columns": np.array([0, -1, 2])}, r"\[0, 4\)")
    refused({"tail_columns": np.array([0.0, 1.0, 2.0])}, "integer")
    refused({"tail_lower": np.array([1.0, 0.0, 1.0])}, "positive")
    refused({"tail_center": np.zeros(2)}, "one value per tail column")
    refused({"refs": np.array([1.0])}, "refs")
    refused({"refs": np.array([1.0, -2.0])}, "refs")
    refused({"tail_upper": np.array([1.0, np.nan, 1.0])}, "non-finite")


# ---------------------------------------------------------------------------------------- checkpoints

SEED = 0  # the small checkpoint's (``conftest.SMALL_SEED``, ``SMALL_SAMPLES``)
SAMPLES = 16


@pytest.fixture
def toy(small_checkpoint: Path, toy_csv: Path) -> tuple[Path, TabularSplits]:
    """The shared small checkpoint (``tests/model_core/conftest.py``) and the splits it was trained on."""
    return small_checkpoint, load_csv(toy_csv, "label")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _set_novelty_sha(directory: Path, sha: str) -> None:
    path = directory / "manifest.json"
    raw = json.loads(path.read_text())
    raw["calibration"]["novelty"]["sha256"] = sha
    path.write_text(json.dumps(raw))


def _refused(directory: Path, match: str) -> None:
    """Both entry points refuse the checkpoint with an IntegrityError matching ``match``."""
    with pytest.raises(IntegrityError, match=match):
        load_novelty(directory, read_manifest(directory))
    with pytest.raises(IntegrityError, match=match):
        load_checkpoint(directory)


def test_checkpoint_novelty_equals_a_freshly_loaded_detector(toy: tuple[Path, TabularSplits]) -> None:
    """load_checkpoint(dir).novelty scores the test inputs exactly like a detector rebuilt from the file
    and the manifest's fields; the manifest records its kind, dimension, file sha256 and the size of the
    calibration split (half the validation split, held out of training)."""
    ckpt, splits = toy
    loaded = load_checkpoint(ckpt)
    det = loaded.novelty
    assert det is not None
    meta = loaded.manifest.calibration.novelty
    assert meta is not None
    assert meta.features == "inputs" and meta.dim == det.dim == splits.n_features
    # a tabular model's detector has the tail score on exactly the preprocessor's numeric columns
    assert det.tail is not None
    np.testing.assert_array_equal(det.tail.columns, splits.preprocessor.numeric_columns)
    assert len(det.tail.columns) > 0
    assert meta.sha256 == sha256_file(ckpt / NOVELTY_FILE)
    fresh = NoveltyDetector.from_tensors(
        NoveltyFeatures(meta.features), load_file(str(ckpt / NOVELTY_FILE)), meta.meta
    )
    z = splits.novelty_input("test")
    np.testing.assert_array_equal(det.score(z), fresh.score(z))
    n_val = len(splits.y_val)
    assert meta.n_scores == round(0.5 * n_val)
    conformal = loaded.manifest.calibration.conformal
    assert conformal is not None and conformal.n == meta.n_scores and conformal.score == "lac"


def test_checkpoint_thresholds_flag_at_most_alpha_of_the_calibration_split(
    toy: tuple[Path, TabularSplits],
) -> None:
    """Recomputing the calibration split's scores (same seeded split, same S and seed as training) and
    applying the manifest's two thresholds and the implausible rule flags <= ood_alpha of those rows and
    more than ood_alpha - 2/n (the step bound of ``joint_thresholds``)."""
    ckpt, splits = toy
    loaded = load_checkpoint(ckpt)
    cal_meta = loaded.manifest.calibration
    assert cal_meta.novelty is not None and loaded.novelty is not None
    _, cal = split_calibration(splits, SEED)
    pred = predict(loaded.model, torch.as_tensor(cal.x), samples=SAMPLES, seed=SEED)
    epistemic = pred.ood_score.numpy().astype(np.float64)
    novelty = loaded.novelty.score(cal.z)
    odd = splits.preprocessor.implausible_rows(cal.z)
    flagged = (epistemic > cal_meta.ood_threshold) | (novelty > cal_meta.novelty.threshold) | odd
    n = len(cal.y)
    assert float(flagged.mean()) <= cal_meta.ood_alpha + 1e-12
    assert float(flagged.mean()) > cal_meta.ood_alpha - 2.0 / n


def test_tampered_novelty_file_is_refused(toy: tuple[Path, TabularSplits], tmp_path: Path) -> None:
    """One byte of novelty.safetensors flipped: IntegrityError naming the sha256 mismatch."""
    d = _copy(toy[0], tmp_path / "c")
    path = d / NOVELTY_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    _refused(d, "sha256")


def test_missing_novelty_file_is_refused(toy: tuple[Path, TabularSplits], tmp_path: Path) -> None:
    """The manifest names a detector but its file is gone: IntegrityError saying the file is missing."""
    d = _copy(toy[0], tmp_path / "c")
    (d / NOVELTY_FILE).unlink()
    _refused(d, "missing")


def _dim(directory: Path) -> int:
    novelty = read_manifest(directory).calibration.novelty
    assert novelty is not None
    return novelty.dim


def _write_with_sha(d: Path, tensors: dict[str, np.ndarray]) -> None:
    save_file(tensors, str(d / NOVELTY_FILE), metadata={"features": "inputs"})
    _set_novelty_sha(d, sha256_file(d / NOVELTY_FILE))


def test_novelty_file_of_the_wrong_dimension_is_refused(
    toy: tuple[Path, TabularSplits], tmp_path: Path
) -> None:
    """A valid detector file whose sha256 is re-recorded in the manifest but whose dimension differs from
    the manifest's ``dim``: IntegrityError naming the dimension (the sha check alone would pass it)."""
    d = _copy(toy[0], tmp_path / "c")
    dim = _dim(d)
    _write_with_sha(d, {"loc": np.zeros(dim + 1), "precision": np.eye(dim + 1)})
    _refused(d, "dimension")


def test_novelty_file_with_nan_is_refused(toy: tuple[Path, TabularSplits], tmp_path: Path) -> None:
    """Right dimension and re-recorded sha256, but a NaN in the precision: IntegrityError (non-finite)."""
    d = _copy(toy[0], tmp_path / "c")
    dim = _dim(d)
    prec = np.eye(dim)
    prec[0, 0] = np.nan
    _write_with_sha(d, {"loc": np.zeros(dim), "precision": prec})
    _refused(d, "non-finite")


def test_novelty_file_with_mismatched_arrays_or_garbage_is_refused(
    toy: tuple[Path, TabularSplits], tmp_path: Path
) -> None:
    """Re-recorded sha256 but loc/precision shapes that disagree, an array missing, or bytes that are
    not safetensors at all: each an IntegrityError."""
    base = toy[0]
    dim = _dim(base)
    d = _copy(base, tmp_path / "a")
    _write_with_sha(d, {"loc": np.zeros(dim), "precision": np.eye(dim + 1)})
    _refused(d, "do not match")
    d = _copy(base, tmp_path / "b")
    _write_with_sha(d, {"loc": np.zeros(dim)})
    _refused(d, "lack")
    d = _copy(base, tmp_path / "c")
    (d / NOVELTY_FILE).write_bytes(b"not a safetensors file at all")
    _set_novelty_sha(d, sha256_file(d / NOVELTY_FILE))
    _refused(d, "safetensors")


def test_valid_replacement_with_recorded_sha_loads(toy: tuple[Path, TabularSplits], tmp_path: Path) -> None:
    """Control for the refusal tests: the same rewrite path with a *valid* detector of the right
    dimension loads, and scores with the new arrays (so the refusals above are due to the defects)."""
    d = _copy(toy[0], tmp_path / "c")
    dim = _dim(d)
    _write_with_sha(d, {"loc": np.zeros(dim), "precision": np.eye(dim)})
    det = load_checkpoint(d).novelty
    assert det is not None
    z = np.random.default_rng(26).normal(size=(4, dim))
    np.testing.assert_allclose(det.score(z), np.linalg.norm(z, axis=1), rtol=1e-12)


def test_manifest_without_novelty_loads_none(toy: tuple[Path, TabularSplits], tmp_path: Path) -> None:
    """A checkpoint whose manifest has no ``calibration.novelty`` (older format) loads with novelty None,
    even with no detector file present."""
    d = _copy(toy[0], tmp_path / "c")
    path = d / "manifest.json"
    raw = json.loads(path.read_text())
    raw["calibration"]["novelty"] = None
    path.write_text(json.dumps(raw))
    (d / NOVELTY_FILE).unlink()
    assert load_novelty(d, read_manifest(d)) is None
    assert load_checkpoint(d).novelty is None

"""Generic CSV loader on a synthetic file: split sizes, disjointness, stratification, OOD, label mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_core.data import TabularSplits, load_csv, split_indices

N_ROWS = 1000
N_NO_TARGET = 7


def _write_csv(tmp_path: Path, seed: int = 123) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    num1 = rng.normal(0.0, 1.0, N_ROWS)
    num2 = rng.exponential(2.0, N_ROWS)
    num2[rng.random(N_ROWS) < 0.2] = np.nan
    colour = rng.choice(["red", "green", "blue"], N_ROWS).astype(object)
    colour[rng.random(N_ROWS) < 0.05] = None
    region = rng.integers(1, 5, N_ROWS)
    p = 1 / (1 + np.exp(-(1.5 * num1 - 1.0 + (colour == "red"))))
    outcome = np.where(rng.random(N_ROWS) < p, "sick", "healthy").astype(object)
    outcome[:N_NO_TARGET] = None
    frame = pd.DataFrame(
        {
            "id": np.arange(N_ROWS),
            "num1": num1,
            "num2": num2,
            "colour": colour,
            "region": region,
            "outcome": outcome,
            "level": 3.0 * num1 + rng.normal(0, 0.1, N_ROWS),
        }
    )
    path = tmp_path / "synthetic.csv"
    frame.to_csv(path, index=False)
    return path, frame


@pytest.fixture()
def csv(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    return _write_csv(tmp_path)


def _all_rows(splits: TabularSplits) -> list[np.ndarray]:
    return [splits.source_rows[name] for name in ("train", "val", "test", "ood")]


def test_binary_string_target(csv: tuple[Path, pd.DataFrame]) -> None:
    path, raw = csv
    splits = load_csv(path, "outcome", drop=["id", "level"], categorical=["region"], seed=3)
    labelled = N_ROWS - N_NO_TARGET
    assert sum(splits.sizes.values()) == labelled
    assert splits.sizes["ood"] == 0 and splits.x_ood.shape == (0, splits.n_features)
    assert splits.sizes["train"] == pytest.approx(0.70 * labelled, abs=2)
    assert splits.sizes["val"] == pytest.approx(0.15 * labelled, abs=2)

    rows = np.concatenate(_all_rows(splits))
    assert len(np.unique(rows)) == len(rows) == labelled
    assert not set(range(N_NO_TARGET)) & set(rows.tolist())

    assert splits.label_names == ["healthy", "sick"]
    assert splits.task == "binary" and splits.target_name == "outcome" and splits.dataset == "synthetic"
    expected = (raw["outcome"] == "sick").to_numpy().astype(np.int64)
    for name in ("train", "val", "test"):
        y = getattr(splits, f"y_{name}")
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, expected[splits.source_rows[name]])
    overall = expected[N_NO_TARGET:].mean()
    for y in (splits.y_train, splits.y_val, splits.y_test):
        assert abs(y.mean() - overall) < 0.01  # stratified: off by at most one row per class

    assert splits.feature_names == ["num1", "num2", "colour", "region"]
    assert splits.preprocessor.output_names == [
        "num1", "num2", "colour=blue", "colour=green", "colour=red",
        "region=1", "region=2", "region=3", "region=4",
    ]  # fmt: skip
    assert splits.x_train.dtype == np.float32
    assert splits.x_train.min() >= 0.0 and splits.x_train.max() <= 1.0
    assert "seed 3" in splits.description and "stratified" in splits.description


def test_fitted_on_train_rows_only(csv: tuple[Path, pd.DataFrame]) -> None:
    path, raw = csv
    splits = load_csv(path, "outcome", drop=["id", "level"])
    train = raw.iloc[splits.source_rows["train"]]
    spec = splits.preprocessor.spec("num2")
    assert spec.impute == pytest.approx(np.nanmedian(train["num2"]))
    assert spec.min == pytest.approx(np.nanmin(train["num2"]))
    everything = raw["num2"][raw["outcome"].notna()]
    assert spec.impute != pytest.approx(np.nanmedian(everything))


def test_ood_query(csv: tuple[Path, pd.DataFrame]) -> None:
    path, raw = csv
    splits = load_csv(path, "outcome", drop=["id", "level"], ood_query="num1 > 1.0")
    labelled = raw[raw["outcome"].notna()]
    assert splits.sizes["ood"] == int((labelled["num1"] > 1.0).sum())
    assert sum(splits.sizes.values()) == len(labelled)
    assert (raw["num1"].to_numpy()[splits.source_rows["ood"]] > 1.0).all()
    for name in ("train", "val", "test"):
        assert (raw["num1"].to_numpy()[splits.source_rows[name]] <= 1.0).all()
    # OOD rows are transformed with the train-fitted scaling, so num1 leaves [0, 1] there.
    assert splits.x_ood.shape == (splits.sizes["ood"], splits.n_features)
    assert splits.x_ood[:, 0].max() > 1.0
    assert "num1 > 1.0" in splits.description


def test_regression_target(csv: tuple[Path, pd.DataFrame]) -> None:
    path, raw = csv
    splits = load_csv(path, "level", task="regression", drop=["id", "outcome"])
    assert splits.label_names is None
    assert splits.y_train.dtype == np.float32
    assert sum(splits.sizes.values()) == N_ROWS
    np.testing.assert_allclose(
        splits.y_test, raw["level"].to_numpy()[splits.source_rows["test"]].astype(np.float32)
    )
    with pytest.raises(ValueError, match="class weights"):
        splits.class_weights()


@pytest.mark.parametrize(
    ("values", "names"),
    [([0, 1], ["0", "1"]), ([True, False], ["False", "True"]), (["yes", "no"], ["no", "yes"])],
)
def test_binary_label_encodings(tmp_path: Path, values: list[object], names: list[str]) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"f": rng.normal(size=200), "t": [values[i % 2] for i in range(200)]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    splits = load_csv(tmp_path / "t.csv", "t")
    assert splits.label_names == names
    ones = np.concatenate([splits.y_train, splits.y_val, splits.y_test]).sum()
    assert ones == 100


def test_class_weights_average_to_one(csv: tuple[Path, pd.DataFrame]) -> None:
    splits = load_csv(csv[0], "outcome", drop=["id", "level"])
    weights = splits.class_weights()
    assert weights.dtype == np.float32 and weights.shape == (2,)
    assert weights[splits.y_train].mean() == pytest.approx(1.0, rel=1e-5)
    counts = np.bincount(splits.y_train)
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1], rel=1e-5)


def test_seed_controls_the_split(csv: tuple[Path, pd.DataFrame]) -> None:
    a = load_csv(csv[0], "outcome", drop=["id", "level"], seed=1)
    b = load_csv(csv[0], "outcome", drop=["id", "level"], seed=1)
    c = load_csv(csv[0], "outcome", drop=["id", "level"], seed=2)
    np.testing.assert_array_equal(a.source_rows["train"], b.source_rows["train"])
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(np.sort(a.source_rows["train"]), np.sort(c.source_rows["train"]))


def test_bad_inputs(tmp_path: Path, csv: tuple[Path, pd.DataFrame]) -> None:
    path, _ = csv
    with pytest.raises(ValueError, match="target column"):
        load_csv(path, "nope")
    with pytest.raises(ValueError, match="two distinct"):
        load_csv(path, "colour", drop=["outcome"])
    with pytest.raises(ValueError, match="every row"):
        load_csv(path, "outcome", ood_query="num1 == num1")
    with pytest.raises(ValueError, match="invalid ood_query"):
        load_csv(path, "outcome", ood_query="no_such_column > 1")
    with pytest.raises(ValueError, match="not in"):
        load_csv(path, "outcome", drop=["ghost"])


def test_split_indices_partition() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    train, val, test = split_indices(100, labels, seed=0)
    assert (len(train), len(val), len(test)) == (70, 15, 15)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    assert labels[train].sum() == 14 and labels[val].sum() == 3 and labels[test].sum() == 3
    plain = split_indices(10, seed=0)
    assert sum(len(part) for part in plain) == 10

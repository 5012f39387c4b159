"""SUPPORT2 loader on the real file: no leakage, complete and disjoint splits, train-only fitting, OOD.

Needs ``LRBNN_DATA_DIR`` pointing at the shared data folder (CI sets it); skipped otherwise, because the
data set is not part of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_core.data import TabularSplits, load_icu
from model_core.data.icu import ICU_EXCLUDED, ICU_OOD_CLASS, ICU_RELATIVE_PATH

pytestmark = pytest.mark.realdata

LEAKING = {
    "hospdead", "death", "d.time", "slos", "sfdm2", "charges", "totcst", "totmcst", "avtisst",
    "surv2m", "surv6m", "prg2m", "prg6m", "dnr", "dnrday", "adlp", "adls", "adlsc", "sps", "aps",
    "dzclass", "dzgroup", "sno",
}  # fmt: skip


def _data_dir() -> Path:
    value = os.environ.get("LRBNN_DATA_DIR", "")
    if not value:
        pytest.skip("LRBNN_DATA_DIR is not set; point it at the shared data folder to run real-data tests")
    path = Path(value)
    if not (path / ICU_RELATIVE_PATH).is_file():
        pytest.skip(f"{path / ICU_RELATIVE_PATH} does not exist")
    return path


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return _data_dir()


@pytest.fixture(scope="module")
def splits(data_dir: Path) -> TabularSplits:
    return load_icu(data_dir, seed=0)


@pytest.fixture(scope="module")
def raw(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / ICU_RELATIVE_PATH)


def test_no_leaking_feature(splits: TabularSplits, raw: pd.DataFrame) -> None:
    assert not LEAKING & set(splits.feature_names)
    assert not set(ICU_EXCLUDED) & set(splits.feature_names)
    # every column of the file is either a feature or excluded with a stated reason
    assert set(splits.feature_names) | set(ICU_EXCLUDED) == set(raw.columns)
    assert splits.target_name == "hospdead" and splits.label_names == ["survived", "died"]


def test_sizes_add_up(splits: TabularSplits, raw: pd.DataFrame) -> None:
    labelled = int(raw["hospdead"].notna().sum())
    assert sum(splits.sizes.values()) == labelled
    rows = np.concatenate(list(splits.source_rows.values()))
    assert len(np.unique(rows)) == labelled
    in_dist = labelled - splits.sizes["ood"]
    assert splits.sizes["train"] == pytest.approx(0.70 * in_dist, abs=2)
    assert splits.sizes["test"] == pytest.approx(0.15 * in_dist, abs=2)
    assert f"train {splits.sizes['train']}" in splits.description


def test_labels_match_file_and_are_stratified(splits: TabularSplits, raw: pd.DataFrame) -> None:
    y = raw["hospdead"].to_numpy()
    for name in ("train", "val", "test", "ood"):
        np.testing.assert_array_equal(getattr(splits, f"y_{name}"), y[splits.source_rows[name]])
    rate = splits.y_train.mean()
    assert abs(splits.y_val.mean() - rate) < 0.005 and abs(splits.y_test.mean() - rate) < 0.005
    weights = splits.class_weights()
    assert weights[splits.y_train].mean() == pytest.approx(1.0, rel=1e-5)


def test_ood_is_the_held_out_disease_class(splits: TabularSplits, raw: pd.DataFrame) -> None:
    dzclass = raw["dzclass"].to_numpy()
    assert splits.sizes["ood"] == int((dzclass == ICU_OOD_CLASS).sum()) > 0
    assert (dzclass[splits.source_rows["ood"]] == ICU_OOD_CLASS).all()
    for name in ("train", "val", "test"):
        assert not (dzclass[splits.source_rows[name]] == ICU_OOD_CLASS).any()
    assert ICU_OOD_CLASS in splits.description


def test_preprocessing_fitted_on_train_only(splits: TabularSplits, raw: pd.DataFrame) -> None:
    train = raw.iloc[splits.source_rows["train"]]
    for name in ("meanbp", "crea", "alb", "age"):
        spec = splits.preprocessor.spec(name)
        assert spec.impute == pytest.approx(float(train[name].median()), abs=1e-9), name
        q1, q3 = train[name].quantile([0.25, 0.75])
        assert spec.clip_high == pytest.approx(q3 + 8 * (q3 - q1)), name
    # train fitting is visible: scoma is far higher in the held-out Coma class than in training
    scoma = splits.preprocessor.output_names.index("scoma")
    assert splits.x_ood[:, scoma].mean() > 2 * splits.x_train[:, scoma].mean()
    assert splits.x_train.min() >= 0.0 and splits.x_train.max() <= 1.0


def test_units_and_categories(splits: TabularSplits) -> None:
    pre = splits.preprocessor
    assert pre.spec("meanbp").unit == "mmHg"
    assert pre.spec("temp").unit == "°C"
    assert pre.spec("sex").kind == "categorical" and pre.spec("sex").categories == ["female", "male"]
    assert pre.spec("race").impute == "white"
    assert splits.x_train.shape[1] == pre.n_outputs == len(pre.output_names)


def test_request_path_matches_training_path(splits: TabularSplits, raw: pd.DataFrame) -> None:
    """The server (dict rows, None for missing) must see exactly what the model was evaluated on."""
    picked = splits.source_rows["test"][:50]
    records = raw.iloc[picked][splits.feature_names].to_dict("records")
    rows = [{k: (None if pd.isna(v) else v) for k, v in rec.items()} for rec in records]
    x, imputed = splits.preprocessor.transform(rows)
    np.testing.assert_array_equal(x, splits.x_test[:50])
    assert any(imputed)  # SUPPORT2 has many missing labs


def test_missing_file_is_reported(data_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="support2"):
        load_icu(data_dir / "missing-subfolder")

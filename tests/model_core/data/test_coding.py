"""Feature codings: validated on load, attached without changing any value, kept by the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from model_core.data.coding import LOINC, Code, FeatureCoding, PatientField
from model_core.data.icu import ICU_CODINGS, ICU_FEATURES
from model_core.data.preprocessing import Preprocessor

ROOT = Path(__file__).resolve().parents[3]


def test_a_coding_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        FeatureCoding()
    with pytest.raises(ValidationError, match="exactly one"):
        FeatureCoding(codes=[Code(system=LOINC, code="8310-5")], patient=PatientField.AGE)
    with pytest.raises(ValidationError):
        FeatureCoding(codes=[Code(system=LOINC, code="2160-0")], molar_mass=-1.0)


def test_every_icu_feature_is_coded_and_codes_are_unique() -> None:
    assert set(ICU_CODINGS) == set(ICU_FEATURES)
    codes = [(c.system, c.code) for coding in ICU_CODINGS.values() for c in coding.codes]
    assert len(codes) == len(set(codes))
    numeric_loinc = [n for n, c in ICU_CODINGS.items() if any(x.system == LOINC for x in c.codes)]
    assert all(ICU_CODINGS[n].ucum for n in numeric_loinc)


def test_with_codings_changes_no_value_and_round_trips_through_the_manifest() -> None:
    data = {"temp": np.array([36.0, 37.5, 39.0, np.nan]), "sex": np.array(["male", "female", "male", None])}
    pre = Preprocessor.fit(data, ["temp", "sex"], categorical={"sex"})
    coded = pre.with_codings({"temp": ICU_CODINGS["temp"], "sex": ICU_CODINGS["sex"]})
    np.testing.assert_array_equal(coded.transform_frame(data), pre.transform_frame(data))
    assert "coding" not in json.dumps(pre.to_dict())  # tasks without codes: manifests unchanged
    again = Preprocessor.from_dict(json.loads(json.dumps(coded.to_dict())))
    assert again.spec("temp").coding == ICU_CODINGS["temp"]
    with pytest.raises(ValueError, match="not features"):
        pre.with_codings({"crea": ICU_CODINGS["crea"]})


def test_the_bundled_icu_manifest_carries_the_loaders_codings() -> None:
    manifest = json.loads((ROOT / "deploy" / "models" / "icu-mortality" / "1" / "manifest.json").read_text())
    pre = Preprocessor.from_dict(manifest["input_schema"]["preprocessing"])
    assert {s.name: s.coding for s in pre.features} == ICU_CODINGS

"""ICU mortality task on SUPPORT2: predict in-hospital death (``hospdead``) from day-3 data.

Why SUPPORT2: the reference setting is MIMIC-III, which needs credentialed access; SUPPORT2 (Knaus et al.
1995, 9,105 seriously ill hospitalised adults, 25.9% in-hospital deaths) is public and has the same kind
of inputs: vital signs, laboratory values and demographics, with many labs missing.

Features (24 raw, 31 model inputs after one-hot) -- only what is known by study day 3:

* demographics / baseline: ``age``, ``sex``, ``race``, ``edu``, ``num.co`` (number of comorbidities),
  ``diabetes``, ``dementia``, ``ca`` (cancer: no / yes / metastatic), ``hday`` (day in hospital at
  which the patient entered the study -- known at entry, so not leaking);
* day-3 physiology and labs: ``meanbp``, ``hrt``, ``resp``, ``temp``, ``pafi``, ``wblc``, ``alb``,
  ``bili``, ``crea``, ``sod``, ``ph``, ``glucose``, ``bun``, ``urine``, and ``scoma`` (the SUPPORT coma
  score, a fixed transformation of the Glasgow Coma Scale -- a measurement, not a fitted model).

Excluded, and why:

* the label and other outcomes: ``hospdead`` (label), ``death``, ``d.time``, ``slos`` (length of stay),
  ``sfdm2`` (functional outcome at 2 months);
* whole-stay quantities that encode how the stay ended: ``charges``, ``totcst``, ``totmcst`` (costs),
  ``avtisst`` (TISS averaged over days 3-25, i.e. mostly after the prediction time);
* predictions: ``surv2m``, ``surv6m`` (the SUPPORT survival model) and ``prg2m``, ``prg6m`` (the
  physician's prognosis); the first pair was fitted on this very cohort's outcomes, so it carries test
  labels into the features, and both would make the network a wrapper around someone else's model;
* ``sps`` and ``aps``: day-3 physiology scores. They are computed from day-3 values and so do not leak
  in time, but ``sps`` uses weights estimated on SUPPORT's own outcomes (test labels again), and
  ``aps`` (APACHE III) is a weighted sum of the very vitals/labs already present with missing labs
  replaced by "normal" -- redundant, and the network should learn its own combination;
* ``dnr``, ``dnrday``: a do-not-resuscitate order is usually written during the stay, often as death
  approaches -- a proxy for the outcome;
* ``adlp``, ``adls``, ``adlsc``: activities-of-daily-living interviews; 31-62% missing with missingness
  driven by the patient being too ill to answer, and ``adlsc`` is itself an imputation model's output;
* ``income``: 33% missing (median/mode imputation would label a third of patients as the poorest
  bracket) and it is not available in the hospital records this task stands in for;
* ``dzgroup`` and ``dzclass``: they define the OOD split below; as features, every OOD row would carry a
  category never seen in training (one-hot all zeros), which is a trivial and unrealistic OOD signal;
* ``sno``: a row identifier.

OOD split: the disease class ``Coma`` (596 patients, 60.7% in-hospital mortality versus 9-37% in the
other classes) is held out. Coma is the class whose physiology differs most (91% of Coma patients have
``scoma`` > 0 versus 9-40% elsewhere, median 61 versus 0), so it tests covariate shift plus a label
shift, and it is the smallest class, so the in-distribution data keeps 93% of the rows. (Holding out
``Cancer`` instead would mostly be a prior shift towards lower mortality with ``ca`` = metastatic for
every patient, a weaker test.) The 8,509 ARF/MOSF, COPD/CHF/Cirrhosis and Cancer patients are split
70/15/15 train/val/test, stratified by ``hospdead``.

Preprocessing (fitted on the training split only): clipping at Q1/Q3 -/+ 8*IQR, median imputation
(mode for categorical), MinMax scaling; see :mod:`model_core.data.preprocessing`. Note that SUPPORT's
authors suggest filling some missing labs with "normal" values (missing often means "not ordered because
unremarkable"); we keep the project-wide median rule so that the server's imputation is uniform and
reported back to the caller per request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_core.data.coding import FeatureCoding, PatientField, local, loinc
from model_core.data.dataset import TabularSplits

if TYPE_CHECKING:
    import pandas as pd
from model_core.data.table import assemble_splits

__all__ = [
    "ICU_CATEGORICAL",
    "ICU_CODINGS",
    "ICU_EXCLUDED",
    "ICU_FEATURES",
    "ICU_OOD_CLASS",
    "ICU_RELATIVE_PATH",
    "ICU_TARGET",
    "ICU_UNITS",
    "load_icu",
]

ICU_RELATIVE_PATH = Path("support2") / "support2.csv"
ICU_TARGET = "hospdead"
#: Disease class held out as the OOD set (column ``dzclass``).
ICU_OOD_CLASS = "Coma"

#: Raw feature -> unit (SUPPORT2 documentation). "" for unitless or categorical features.
ICU_UNITS: dict[str, str] = {
    "age": "years",
    "sex": "",
    "race": "",
    "edu": "years",
    "num.co": "count",
    "diabetes": "0/1",
    "dementia": "0/1",
    "ca": "",
    "hday": "days",
    "scoma": "score 0-100",
    "meanbp": "mmHg",
    "hrt": "bpm",
    "resp": "breaths/min",
    "temp": "°C",
    "pafi": "mmHg",
    "wblc": "x10^9/L",
    "alb": "g/dL",
    "bili": "mg/dL",
    "crea": "mg/dL",
    "sod": "mEq/L",
    "ph": "",
    "glucose": "mg/dL",
    "bun": "mg/dL",
    "urine": "mL/day",
}
ICU_FEATURES: list[str] = list(ICU_UNITS)

#: Feature -> FHIR coding (``docs/service.md``, "FHIR"): LOINC where one exists, with the canonical UCUM
#: unit of SUPPORT2's values; a molar mass where labs also report the analyte by amount of substance
#: (creatinine, glucose, urea nitrogen, bilirubin). Age, sex and race come from the Patient resource;
#: SUPPORT2's own scores and counts (and its 0/1 diagnoses) have no standard code: a local code system.
ICU_CODINGS: dict[str, FeatureCoding] = {
    "age": FeatureCoding(patient=PatientField.AGE, ucum="a"),
    "sex": FeatureCoding(patient=PatientField.GENDER),
    "race": FeatureCoding(patient=PatientField.RACE),
    "edu": FeatureCoding(codes=[local("edu", "Years of education")], ucum="a"),
    "num.co": FeatureCoding(codes=[local("num.co", "Number of comorbidities")], ucum="1"),
    "diabetes": FeatureCoding(codes=[local("diabetes", "Diabetes (0/1)")], ucum="1"),
    "dementia": FeatureCoding(codes=[local("dementia", "Dementia (0/1)")], ucum="1"),
    "ca": FeatureCoding(codes=[local("ca", "Cancer: no, yes or metastatic")]),
    "hday": FeatureCoding(codes=[local("hday", "Day in hospital at study entry")], ucum="d"),
    "scoma": FeatureCoding(
        codes=[local("scoma", "SUPPORT coma score (0-100, from the Glasgow scale)")], ucum="1"
    ),
    "meanbp": FeatureCoding(codes=[loinc("8478-0", "Mean blood pressure")], ucum="mm[Hg]"),
    "hrt": FeatureCoding(codes=[loinc("8867-4", "Heart rate")], ucum="/min"),
    "resp": FeatureCoding(codes=[loinc("9279-1", "Respiratory rate")], ucum="/min"),
    "temp": FeatureCoding(codes=[loinc("8310-5", "Body temperature")], ucum="Cel"),
    "pafi": FeatureCoding(
        codes=[loinc("50984-4", "Horowitz index (PaO2/FiO2) in Arterial blood")], ucum="mm[Hg]"
    ),
    "wblc": FeatureCoding(
        codes=[loinc("6690-2", "Leukocytes [#/volume] in Blood by Automated count")], ucum="10*9/L"
    ),
    "alb": FeatureCoding(codes=[loinc("1751-7", "Albumin [Mass/volume] in Serum or Plasma")], ucum="g/dL"),
    "bili": FeatureCoding(
        codes=[
            loinc("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma"),
            loinc("14631-6", "Bilirubin.total [Moles/volume] in Serum or Plasma"),
        ],
        ucum="mg/dL",
        molar_mass=584.66,
    ),
    "crea": FeatureCoding(
        codes=[
            loinc("2160-0", "Creatinine [Mass/volume] in Serum or Plasma"),
            loinc("14682-9", "Creatinine [Moles/volume] in Serum or Plasma"),
        ],
        ucum="mg/dL",
        molar_mass=113.12,
    ),
    "sod": FeatureCoding(codes=[loinc("2951-2", "Sodium [Moles/volume] in Serum or Plasma")], ucum="mmol/L"),
    "ph": FeatureCoding(codes=[loinc("2744-1", "pH of Arterial blood")], ucum="[pH]"),
    "glucose": FeatureCoding(
        codes=[
            loinc("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
            loinc("14749-6", "Glucose [Moles/volume] in Serum or Plasma"),
        ],
        ucum="mg/dL",
        molar_mass=180.16,
    ),
    "bun": FeatureCoding(
        codes=[
            loinc("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma"),
            loinc("14937-7", "Urea nitrogen [Moles/volume] in Serum or Plasma"),
        ],
        ucum="mg/dL",
        molar_mass=28.014,  # urea nitrogen: the two N atoms of urea, as labs report BUN
    ),
    "urine": FeatureCoding(codes=[loinc("9192-6", "Urine output 24 hour")], ucum="mL/d"),
}
ICU_CATEGORICAL: frozenset[str] = frozenset({"sex", "race", "ca"})

#: Columns that must never be features, with the reason (see the module docstring).
ICU_EXCLUDED: dict[str, str] = {
    "hospdead": "label",
    "death": "outcome (death by end of follow-up)",
    "d.time": "outcome (follow-up time)",
    "slos": "outcome (length of stay)",
    "sfdm2": "outcome (functional disability at 2 months)",
    "charges": "whole-stay cost",
    "totcst": "whole-stay cost",
    "totmcst": "whole-stay cost",
    "avtisst": "TISS averaged over days 3-25 (after prediction time)",
    "surv2m": "SUPPORT model prediction fitted on this cohort",
    "surv6m": "SUPPORT model prediction fitted on this cohort",
    "prg2m": "physician prognosis",
    "prg6m": "physician prognosis",
    "sps": "physiology score with weights fitted on this cohort's outcomes",
    "aps": "APACHE III score, redundant with the raw physiology",
    "dnr": "DNR order, often written as death approaches",
    "dnrday": "day of DNR order",
    "adlp": "ADL interview, mostly missing, missingness tied to severity",
    "adls": "ADL interview, mostly missing, missingness tied to severity",
    "adlsc": "imputation-model output for ADL",
    "income": "33% missing, not in hospital records",
    "dzgroup": "defines the OOD split (finer than dzclass)",
    "dzclass": "defines the OOD split",
    "sno": "row identifier",
}


#: Constructed shift sets: typical unit errors of a lab or charting system, each as (feature, conversion
#: from the model's unit, the unit sent). Temperature in °F, creatinine and bilirubin in µmol/L (SI labs),
#: albumin in g/L, glucose in mmol/L. Some leave the value inside the training range (glucose, bilirubin
#: below ~3.7 mg/dL): those can only be caught by novelty, not by the plausible range.
ICU_UNIT_ERRORS: dict[str, tuple[str, float, float, str]] = {
    # name: (feature, factor, offset, unit sent): sent = factor * value + offset
    "temp_fahrenheit": ("temp", 1.8, 32.0, "°F"),
    "crea_umol": ("crea", 88.42, 0.0, "µmol/L"),
    "bili_umol": ("bili", 17.1, 0.0, "µmol/L"),
    "alb_g_per_l": ("alb", 10.0, 0.0, "g/L"),
    "glucose_mmol": ("glucose", 1.0 / 18.016, 0.0, "mmol/L"),
}
#: seed of the mixed unit-error set's draw (one error per patient among its measured features)
UNIT_ERROR_SEED = 20261203


def unit_error_frames(test: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The test patients re-sent with unit errors: one set per error (the patients with that feature
    measured) and ``unit_errors``, every test patient with one error drawn among its measured ones."""
    out: dict[str, pd.DataFrame] = {}
    for name, (feature, factor, offset, _) in ICU_UNIT_ERRORS.items():
        rows = test[test[feature].notna()].copy()
        rows[feature] = factor * rows[feature] + offset
        out[f"units_{name}"] = rows
    rng = np.random.default_rng(UNIT_ERROR_SEED)
    names = list(ICU_UNIT_ERRORS)
    measured = test[[ICU_UNIT_ERRORS[n][0] for n in names]].notna().to_numpy()  # (n, errors)
    mixed = test[measured.any(axis=1)].copy()  # a patient with none of them measured cannot be re-sent
    measured = measured[measured.any(axis=1)]
    # one error per patient, uniform among its measured features: the argmax of masked uniform draws
    pick = np.where(measured, rng.random(measured.shape), -1.0).argmax(axis=1)
    for k, name in enumerate(names):
        feature, factor, offset, _ = ICU_UNIT_ERRORS[name]
        rows = pick == k
        col = mixed.columns.get_loc(feature)
        mixed.iloc[rows, col] = factor * mixed.iloc[rows, col] + offset
    out["unit_errors"] = mixed
    return out


def load_icu(data_dir: str | os.PathLike[str], seed: int = 0) -> TabularSplits:
    """Load ``<data_dir>/support2/support2.csv`` as the ICU-mortality task (see module docstring).

    ``seed`` only changes the train/val/test draw; the OOD set (all Coma patients) is fixed, so OOD
    numbers across seeds differ only through the model.
    """
    import pandas as pd

    path = Path(data_dir) / ICU_RELATIVE_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"SUPPORT2 not found at {path}; point --data-dir / $LRBNN_DATA_DIR at the folder containing "
            f"{ICU_RELATIVE_PATH}"
        )
    frame = pd.read_csv(path, usecols=[*ICU_FEATURES, ICU_TARGET, "dzclass"])
    missing_label = frame[ICU_TARGET].isna()
    frame = frame[~missing_label]
    labels = frame[ICU_TARGET].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{path}: {ICU_TARGET} must be 0/1")
    ood_mask = (frame["dzclass"] == ICU_OOD_CLASS).to_numpy()
    if not ood_mask.any():
        raise ValueError(f"{path}: no rows with dzclass == {ICU_OOD_CLASS!r}; is this the SUPPORT2 file?")
    description = (
        f"SUPPORT2 ({len(frame)} patients with a label): predict in-hospital death ({ICU_TARGET}) from "
        f"{len(ICU_FEATURES)} day-3 physiology, lab and demographic features (no outcomes, costs, model "
        f"predictions, DNR status or disease group). OOD = the {int(ood_mask.sum())} patients of disease "
        f"class {ICU_OOD_CLASS!r} (mortality {labels[ood_mask].mean():.1%}, distinct neurological "
        f"physiology); the other {int((~ood_mask).sum())} (ARF/MOSF, COPD/CHF/Cirrhosis, Cancer; "
        f"mortality {labels[~ood_mask].mean():.1%}) are split 70/15/15 train/val/test stratified by "
        f"label with seed {seed}. Clipping (8*IQR), median/mode imputation and MinMax scaling are fitted "
        "on the training split only."
    )
    splits = assemble_splits(
        frame,
        features=ICU_FEATURES,
        categorical=ICU_CATEGORICAL,
        y=labels.astype(np.int64),
        ood_mask=ood_mask,
        seed=seed,
        task="binary",
        target_name=ICU_TARGET,
        dataset="support2",
        description=description,
        label_names=["survived", "died"],
        units=ICU_UNITS,
    )
    splits.preprocessor = splits.preprocessor.with_codings(ICU_CODINGS)
    test = frame.loc[splits.source_rows["test"], ICU_FEATURES]
    splits.shifts = {
        name: splits.preprocessor.transform_frame(rows, clip=False)
        for name, rows in unit_error_frames(test).items()
    }
    return splits

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_core.checkpoint import (
    IntegrityError,
    ManifestError,
    TensorMismatchError,
    UnsupportedVersionError,
    load_checkpoint,
)
from model_core.checkpoint.io import sha256_file
from model_core.data import load_csv
from model_core.predict import predict


@pytest.fixture
def ckpt(small_checkpoint: Path) -> Path:
    return small_checkpoint


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_round_trip_gives_identical_predictions(ckpt: Path) -> None:
    a, b = load_checkpoint(ckpt), load_checkpoint(ckpt)
    x = torch.randn(5, a.manifest.architecture.in_features)
    assert torch.equal(
        predict(a.model, x, samples=8, seed=1).mean, predict(b.model, x, samples=8, seed=1).mean
    )
    m = a.manifest
    assert m.sha256 == sha256_file(ckpt / "weights.safetensors")
    assert m.calibration.ood_quantile == 0.95 and m.calibration.ood_score.value == "mutual_information"
    assert len(m.drift_reference.quantiles) == 1000
    assert m.input_schema.preprocessing["features"][0]["name"] == "x1"
    assert m.output_schema.labels == ["no", "yes"]
    assert not any(p.suffix == ".pt" or p.suffix == ".pkl" for p in ckpt.iterdir())


def test_thresholds_are_jointly_calibrated_on_the_calibration_split(ckpt: Path, toy_csv: Path) -> None:
    """The manifest's epistemic and novelty thresholds are exactly ``joint_thresholds`` of the held-out
    calibration rows' scores (same seed and S as training), and the combined rule flags <= 5 % there."""
    from model_core.ood import joint_thresholds, reasons
    from model_core.training.pipeline import split_calibration

    loaded = load_checkpoint(ckpt)
    assert loaded.novelty is not None
    calib = loaded.manifest.calibration
    splits = load_csv(toy_csv, "label")
    _, cal = split_calibration(splits, seed=0)
    val = predict(loaded.model, torch.from_numpy(cal.x), samples=16, seed=0)  # same seed and S as training
    epistemic, novelty = val.ood_score.numpy(), loaded.novelty.score(cal.z)
    odd = splits.preprocessor.implausible_rows(cal.z)
    joint = joint_thresholds(epistemic, novelty, odd, alpha=calib.ood_alpha)
    assert calib.ood_threshold == pytest.approx(joint.epistemic, rel=1e-5)
    assert calib.novelty is not None and calib.novelty.threshold == pytest.approx(joint.novelty, rel=1e-9)
    flag, _ = reasons(epistemic, calib.ood_threshold, novelty, calib.novelty.threshold, odd)
    assert flag.mean() <= calib.ood_alpha + 1e-12


def test_changed_byte_is_refused(ckpt: Path, tmp_path: Path) -> None:
    bad = _copy(ckpt, tmp_path / "bad")
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[-3] ^= 0x01
    (bad / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_checkpoint(bad)


def test_wrong_shape_is_refused_even_with_a_matching_hash(ckpt: Path, tmp_path: Path) -> None:
    bad = _copy(ckpt, tmp_path / "bad")
    tensors = load_file(str(bad / "weights.safetensors"))
    name = next(k for k in tensors if k.endswith("mu_a"))
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
    save_file(tensors, str(bad / "weights.safetensors"))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["sha256"] = sha256_file(bad / "weights.safetensors")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TensorMismatchError, match=name):
        load_checkpoint(bad)


def test_missing_tensor_is_refused(ckpt: Path, tmp_path: Path) -> None:
    bad = _copy(ckpt, tmp_path / "bad")
    tensors = load_file(str(bad / "weights.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(bad / "weights.safetensors"))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["sha256"] = sha256_file(bad / "weights.safetensors")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TensorMismatchError, match="missing"):
        load_checkpoint(bad)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_format_version_is_refused(ckpt: Path, tmp_path: Path, version: object) -> None:
    bad = _copy(ckpt, tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format_version"] = version
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedVersionError, match="format_version"):
        load_checkpoint(bad)


def test_bad_manifest_names_the_field(ckpt: Path, tmp_path: Path) -> None:
    bad = _copy(ckpt, tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["calibration"]["ood_threshold"] = "high"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"calibration\.ood_threshold"):
        load_checkpoint(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="JSON"):
        load_checkpoint(bad)


def test_no_pickle_or_unsafe_torch_load_in_the_package() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*root.joinpath("model_core").rglob("*.py"), *root.joinpath("service").rglob("*.py")]:
        text = path.read_text()
        if "import pickle" in text or "pickle.load" in text or "import dill" in text:
            offenders.append(str(path))
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}: {line.strip()}")
    assert offenders == []

"""Sequence windows and raw text through V1 and V2, on tiny generated air and sentiment checkpoints."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from model_core.cli.main import main
from service.errors import InvalidInput
from tests.model_core.test_air import write_uci_csv
from tests.model_core.test_sentiment import make_sentiment_dir
from tests.service.service_helpers import without_ids

pytestmark = pytest.mark.anyio
AIR, TEXT = "pm25", "reviews"
TRAIN = ["--rank", "2", "--epochs", "1", "--samples", "8", "--no-progress", "--seed", "0"]


@pytest.fixture(scope="module")
def kinds_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with a tiny low-rank LSTM (sequence) and a tiny low-rank Transformer (text)."""
    root = tmp_path_factory.mktemp("kinds")
    air_dir, text_dir, repo = root / "air", root / "text", root / "models"
    write_uci_csv(air_dir)
    make_sentiment_dir(text_dir)
    jobs = [
        ("air", air_dir, AIR, ["--hidden", "8", "8"]),
        ("sentiment", text_dir, TEXT, []),
    ]
    for task, data, name, extra in jobs:
        out = repo / name / "1"
        args = ["train", "--task", task, "--method", "lowrank", *TRAIN, *extra, "--model-name", name]
        assert main([*args, "--data-dir", str(data), "--out", str(out)]) == 0
    return repo


@pytest.fixture(scope="module")
def manifests(kinds_repo: Path) -> dict[str, dict[str, Any]]:
    return {n: json.loads((kinds_repo / n / "1" / "manifest.json").read_text()) for n in (AIR, TEXT)}


@asynccontextmanager
async def serve(repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_repository=repo, max_batch_delay_ms=2.0))
    async with app.router.lifespan_context(app):
        loading = app.state.lrbnn.loading
        assert loading is not None
        await loading
        assert not app.state.lrbnn.repository.errors, app.state.lrbnn.repository.errors
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            yield client


def hours(**overrides: Any) -> list[dict[str, Any]]:
    """24 hours inside the generated data's ranges (see ``write_uci_csv``), oldest first, raw hour/month."""
    out = []
    for t in range(24):
        row: dict[str, Any] = {
            "pm2.5": 100.0 + t,
            "DEWP": -17.0,
            "TEMP": 3.0,
            "PRES": 1010.0,
            "cbwd": "NW",
            "Iws": 3.0,
            "Is": 0,
            "Ir": 0,
            "hour": t,
            "month": 1,
        }
        row.update(overrides)
        out.append(row)
    return out


async def v1(client: httpx.AsyncClient, name: str, instances: list[Any], seed: int = 3) -> httpx.Response:
    body = {"instances": instances, "parameters": {"samples": 16, "seed": seed}}
    return await client.post(f"/v1/models/{name}:predict", json=body)


async def test_sequence_window_predicts_with_a_conformal_interval(
    kinds_repo: Path, manifests: dict[str, dict[str, Any]]
) -> None:
    calib = manifests[AIR]["calibration"]
    async with serve(kinds_repo) as client:
        r = await v1(client, AIR, [{"hours": hours()}])
        assert r.status_code == 200, r.text
        p = r.json()["predictions"][0]
        assert p["imputed"] == [] and p["flagged"] == []
        low, high = p["interval"]
        assert low < p["mean"] < high
        conformal = calib["conformal"]  # the contract's central 90 %, split-conformal: mean ± q̂·sd
        assert conformal["level"] == 0.9 and conformal["score"] == "normalized_residual"
        want = 2 * conformal["quantile"] * math.sqrt(p["variance"])
        assert high - low == pytest.approx(want, rel=1e-4)
        assert p["ood_score"] == pytest.approx(math.sqrt(p["variance"]), rel=1e-4)
        # the window summary's novelty score, and no prediction set for a regression
        assert p["novelty_score"] > 0 and "prediction_set" not in p
        # a sensor stuck at one PM2.5 value for the whole day: the novelty detector sees no spread
        stuck = [{**h, "pm2.5": 999.0} for h in hours()]
        q = (await v1(client, AIR, [{"hours": stuck}])).json()["predictions"][0]
        assert q["novelty_score"] > calib["novelty"]["threshold"] and "novelty" in q["ood_reasons"]


def encoded_hours() -> list[dict[str, Any]]:
    """:func:`hours` with hour/month replaced by their cyclic encodings, computed independently here."""
    out = []
    for row in hours():
        h, m = row.pop("hour"), row.pop("month")
        row |= {"hour_sin": math.sin(2 * math.pi * h / 24), "hour_cos": math.cos(2 * math.pi * h / 24)}
        row |= {
            "month_sin": math.sin(2 * math.pi * (m - 1) / 12),
            "month_cos": math.cos(2 * math.pi * (m - 1) / 12),
        }
        out.append(row)
    return out


async def test_raw_hour_and_month_equal_their_encodings(kinds_repo: Path) -> None:
    encoded = encoded_hours()
    async with serve(kinds_repo) as client:
        a = (await v1(client, AIR, [{"hours": hours()}])).json()["predictions"][0]
        b = (await v1(client, AIR, [{"hours": encoded}])).json()["predictions"][0]
    assert a["mean"] == b["mean"] and a["variance"] == b["variance"]


async def test_missing_pm25_is_forward_filled_and_reported(kinds_repo: Path) -> None:
    gap = hours()
    gap[5]["pm2.5"] = None
    filled = hours()
    filled[5]["pm2.5"] = filled[4]["pm2.5"]
    first = hours()
    del first[0]["pm2.5"]  # nothing earlier to carry forward: imputed with the training median
    async with serve(kinds_repo) as client:
        a = (await v1(client, AIR, [{"hours": gap}])).json()["predictions"][0]
        b = (await v1(client, AIR, [{"hours": filled}])).json()["predictions"][0]
        c = (await v1(client, AIR, [{"hours": first}])).json()["predictions"][0]
    assert a["imputed"] == ["hours[5].pm2.5"] and a["mean"] == b["mean"]
    assert c["imputed"] == ["hours[0].pm2.5"]


@pytest.mark.parametrize(
    ("instance", "field", "words"),
    [
        ({"hours": hours()[:23]}, "instances.0.hours", "24 hourly objects"),
        ({"window": hours()}, "instances.0", "unknown key"),
        ({"hours": hours(hour=24)}, "instances.0.hours.0.hour", "0..23"),
        ({"hours": hours(month=0)}, "instances.0.hours.0.month", "1..12"),
        ({"hours": hours(TEMP="warm")}, "instances.0.hours.0.TEMP", "TEMP"),
        ({"hours": hours(ozone=3.0)}, "instances.0.hours.0.ozone", "unknown feature"),
        ({"hours": [*hours()[:23], 7]}, "instances.0.hours.23", "object"),
    ],
)
async def test_bad_sequence_windows_are_422_naming_the_field(
    kinds_repo: Path, instance: dict[str, Any], field: str, words: str
) -> None:
    async with serve(kinds_repo) as client:
        r = await v1(client, AIR, [instance])
        assert r.status_code == 422, r.text  # well-formed JSON, invalid instance (as for tabular)
        assert r.json()["field"] == field and words in r.json()["error"]
        assert (await client.get("/readyz")).status_code == 200


async def test_a_bad_hour_of_a_later_instance_is_named_by_instance_and_hour(kinds_repo: Path) -> None:
    bad = hours()
    bad[5]["TEMP"] = "warm"
    async with serve(kinds_repo) as client:
        r = await v1(client, AIR, [{"hours": hours()}, {"hours": bad}])
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "instances.1.hours.5.TEMP"


async def test_implausible_hour_values_are_flagged_not_hidden(kinds_repo: Path) -> None:
    window = hours()
    window[7]["TEMP"] = 300.0  # Kelvin sent for Celsius
    async with serve(kinds_repo) as client:
        p = (await v1(client, AIR, [{"hours": window}])).json()["predictions"][0]
    assert p["flagged"] == ["hours[7].TEMP"]


async def test_v2_window_tensor_matches_v1(kinds_repo: Path, manifests: dict[str, dict[str, Any]]) -> None:
    async with serve(kinds_repo) as client:
        meta = (await client.get(f"/v2/models/{AIR}")).json()
        names = meta["parameters"]["feature_names"]
        cats = meta["parameters"]["categories"]
        assert meta["inputs"] == [{"name": "window", "datatype": "FP32", "shape": [-1, 24, len(names)]}]
        assert meta["parameters"]["input"]["kind"] == "sequence"
        rows = []
        for h in encoded_hours():
            h["cbwd"] = cats["cbwd"].index(h["cbwd"])
            rows.append([h[n] for n in names])
        body = {
            "inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 24, len(names)], "data": rows}],
            "parameters": {"samples": 16, "seed": 3},
        }
        r = await client.post(f"/v2/models/{AIR}/infer", content=orjson.dumps(body))
        assert r.status_code == 200, r.text
        out = {o["name"]: o["data"] for o in r.json()["outputs"]}
        ref = (await v1(client, AIR, [{"hours": hours()}])).json()["predictions"][0]
        assert out["mean"][0] == pytest.approx(ref["mean"], rel=1e-5)
        bad = {**body, "inputs": [{**body["inputs"][0], "shape": [1, 23, len(names)]}]}  # type: ignore[dict-item]
        r = await client.post(f"/v2/models/{AIR}/infer", content=orjson.dumps(bad))
        assert r.status_code == 400 and "[N, 24," in r.json()["error"]
        # two windows, a category index out of range at the second one's hour 5: named by window and hour
        second = [list(row) for row in rows]
        second[5][names.index("cbwd")] = 99
        two = {
            "inputs": [
                {"name": "window", "datatype": "FP64", "shape": [2, 24, len(names)], "data": rows + second}
            ]
        }
        r = await client.post(f"/v2/models/{AIR}/infer", content=orjson.dumps(two))
        assert r.status_code == 422 and r.json()["field"] == "inputs.0.data.1.5.cbwd", r.text


async def test_text_predicts_and_guards_its_input(kinds_repo: Path) -> None:
    async with serve(kinds_repo) as client:
        r = await v1(client, TEXT, [{"text": "a wonderful, funny film"}, {"text": "   "}])
        assert r.status_code == 200, r.text
        good, empty = r.json()["predictions"]
        assert 0.0 <= good["mean"] <= 1.0 and good["flagged"] == [] and empty["flagged"] == ["text"]
        # a text has no plausible ranges: its reasons can only be the two scores
        assert good["novelty_score"] >= 0 and "implausible" not in good["ood_reasons"]
        assert len(good["prediction_set"]) >= 1
        for instance, field in [
            ({"text": "x" * 10_001}, "instances.0.text"),
            ({"text": 42}, "instances.0.text"),
            ({"text": "ok", "lang": "en"}, "instances.0"),
            ({"review": "ok"}, "instances.0"),
        ]:
            r = await v1(client, TEXT, [instance])
            assert r.status_code == 422 and r.json()["field"] == field, r.text
        info = (await client.get("/v1/models")).json()["models"]
        text_info = next(m for m in info if m["name"] == TEXT)
        assert text_info["input"]["kind"] == "text" and text_info["features"] == []


async def test_text_batching_identity(kinds_repo: Path) -> None:
    """Concurrent (merged) text requests answer exactly what each answers alone."""
    texts = [
        f"the film is {w} and {v}" for w, v in zip(["dull", "superb", "moving", "awful"], "abcd", strict=True)
    ]
    async with serve(kinds_repo) as client:
        alone = [(await v1(client, TEXT, [{"text": t}], seed=i)).json() for i, t in enumerate(texts)]
        together = await asyncio.gather(
            *(v1(client, TEXT, [{"text": t}], seed=i) for i, t in enumerate(texts))
        )
    assert [without_ids(r.json()["predictions"]) for r in together] == [
        without_ids(a["predictions"]) for a in alone
    ]


def _bytes_body(texts: list[bytes], **params: Any) -> tuple[bytes, dict[str, str]]:
    blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [len(texts)],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": params,
        }
    )
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


async def test_v2_bytes_json_and_binary_match_v1(kinds_repo: Path) -> None:
    text = "a charming story with a superb cast"
    async with serve(kinds_repo) as client:
        meta = (await client.get(f"/v2/models/{TEXT}")).json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        ref = (await v1(client, TEXT, [{"text": text}])).json()["predictions"][0]["mean"]
        body = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}],
            "parameters": {"samples": 16, "seed": 3},
        }
        r = await client.post(f"/v2/models/{TEXT}/infer", content=orjson.dumps(body))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"][0] == pytest.approx(ref, rel=1e-6)
        content, headers = _bytes_body([text.encode()], samples=16, seed=3)
        r = await client.post(f"/v2/models/{TEXT}/infer", content=content, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"][0] == pytest.approx(ref, rel=1e-6)
        content, headers = _bytes_body([b"\xff\xfe broken"])
        r = await client.post(f"/v2/models/{TEXT}/infer", content=content, headers=headers)
        assert r.status_code == 400 and "UTF-8" in r.json()["error"]
        body["inputs"][0]["data"] = [3.5]  # type: ignore[index]
        r = await client.post(f"/v2/models/{TEXT}/infer", content=orjson.dumps(body))
        assert r.status_code == 400 and "not a string" in r.json()["error"]
        body["inputs"][0]["datatype"] = "FP32"  # type: ignore[index]
        r = await client.post(f"/v2/models/{TEXT}/infer", content=orjson.dumps(body))
        assert r.status_code == 400 and "BYTES" in r.json()["error"]


def test_window_tensor_encodes_bitwise_as_its_instances(kinds_repo: Path) -> None:
    """The sequence adapter's V2 path (a [N, 24, F] tensor) against the same windows sent as V1 hours:
    the same model input, unclipped input, imputed and flagged names (a gap in PM2.5 carried forward
    from the last earlier reading, listed after the imputed names), instance boundaries kept."""
    from model_core.checkpoint.manifest import InputSchema
    from service.inputs import SequenceInput

    manifest = json.loads((kinds_repo / AIR / "1" / "manifest.json").read_text())
    adapter = SequenceInput(InputSchema.model_validate(manifest["input_schema"]))
    specs = adapter.features()
    rng = np.random.default_rng(11)
    tensor = np.empty((3, 24, len(specs)))
    for j, spec in enumerate(specs):
        if spec.kind == "categorical":
            tensor[:, :, j] = rng.integers(0, len(spec.categories or []), (3, 24))
        else:
            assert spec.plausible_low is not None and spec.plausible_high is not None
            span = spec.plausible_high - spec.plausible_low
            tensor[:, :, j] = rng.uniform(
                spec.plausible_low - span / 4, spec.plausible_high + span / 4, (3, 24)
            )
    tensor[rng.random(tensor.shape) < 0.15] = np.nan
    target = adapter.pre.feature_names.index("pm2.5")
    tensor[0, :, :] = np.nan  # nothing at all: every value imputed, nothing to carry forward
    tensor[1, 2, target], tensor[1, 3:9, target] = 80.0, np.nan  # a six-hour gap, carried forward
    tensor[2, :5, target] = np.nan  # missing before the first reading: imputed
    instances = [
        {
            "hours": [
                {
                    spec.name: (spec.categories or [])[int(v)] if spec.kind == "categorical" else v
                    for spec, v in zip(specs, hour, strict=True)
                    if not np.isnan(v)
                }
                for hour in window
            ]
        }
        for window in tensor.tolist()
    ]
    got, want = adapter.encode_tensor(tensor), adapter.encode(instances)
    assert got.x.shape == (3, 24, 15) and got.x.tobytes() == want.x.tobytes()
    assert got.z.tobytes() == want.z.tobytes()
    assert got.imputed == want.imputed and got.flagged == want.flagged
    assert got.implausible is not None and want.implausible is not None
    assert got.implausible.tolist() == want.implausible.tolist()
    for t in range(3, 9):  # carried forward: the reading of hour 2, named after the hour's imputed names
        assert [n for n in got.imputed[1] if n.startswith(f"hours[{t}].")][-1] == f"hours[{t}].pm2.5"
        column = adapter.pre.output_names.index("pm2.5")
        assert got.z[1, t, column] == got.z[1, 2, column]
    assert "hours[4].pm2.5" in got.imputed[2] and any(got.flagged)
    assert tensor[1, 5, target] != tensor[1, 5, target]  # the caller's tensor is not written into
    tensor[2, 7, target] = np.inf
    with pytest.raises(InvalidInput) as err:
        adapter.encode_tensor(tensor)
    assert err.value.field == "inputs.0.data.2.7.pm2.5" and "infinite" in str(err.value)


def _gauges(text: str, model: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "lrbnn_feature_drift" and s.labels["model"] == model:
                out[(s.labels["feature"], s.labels["statistic"])] = float(s.value)
    return out


async def test_feature_drift_of_a_window_and_of_a_text(
    kinds_repo: Path, manifests: dict[str, dict[str, Any]]
) -> None:
    """Sequence: a window's latest hour is binned; text: token length and unknown-token rate. Texts of
    words the vocabulary never saw put every windowed unknown-token rate above the training maximum."""
    text_refs = manifests[TEXT]["drift_reference"]["features"]
    assert [f["name"] for f in text_refs] == ["token_length", "unknown_token_rate"]
    assert text_refs[1]["quantiles"][-1] < 1.0  # some word of every training text is in the vocabulary
    air_refs = manifests[AIR]["drift_reference"]["features"]
    assert [f["name"] for f in air_refs][:3] == ["pm2.5", "DEWP", "TEMP"]
    async with serve(kinds_repo) as client:
        for _ in range(3):
            assert (await v1(client, AIR, [{"hours": hours(TEMP=40.0)}])).status_code == 200
        unknown = [{"text": "zqx vbrm plokt wuzzle fnord grelb"}] * 8  # no word of the vocabulary
        assert (await v1(client, TEXT, unknown)).status_code == 200
        text = (await client.get("/metrics")).text
    air, words = _gauges(text, AIR), _gauges(text, TEXT)
    assert {f for f, _ in air} == {f["name"] for f in air_refs}
    assert air[("TEMP", "ks")] > 0.5  # 40 °C in every latest hour: far above the generated range
    assert set(words) == {(f, s) for f in ("token_length", "unknown_token_rate") for s in ("psi", "ks")}
    assert words[("unknown_token_rate", "ks")] == 1.0  # the whole window beyond the reference's top
    assert words[("unknown_token_rate", "psi")] > 5.0

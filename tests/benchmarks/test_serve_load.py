"""Unit tests of ``benchmarks/serve_load.py``: arguments, statistics, the request and load generators.

No server and no MLServer here: the benchmark itself is run by hand (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmark_modules import benchmark_module, load_benchmark

ROOT = Path(__file__).resolve().parents[2]
sl = load_benchmark("serve_load.py", "serve_load")
lg = benchmark_module("loadgen")
procfs = benchmark_module("procfs")
MANIFEST = json.loads((ROOT / "deploy" / "models" / "icu-mortality" / "1" / "manifest.json").read_text())


# -- arguments -----------------------------------------------------------------------------------
def test_defaults(monkeypatch):
    monkeypatch.delenv("LRBNN_DATA_DIR", raising=False)
    args = sl.parse_args([])
    assert args.samples == 128
    assert args.concurrency == [1, 8, 32, 128]
    assert args.max_batch_size == 32 and args.max_batch_delay_ms == 2.0
    assert args.data_dir is None
    assert args.torch_threads is None


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LRBNN_DATA_DIR", str(tmp_path))
    assert sl.parse_args([]).data_dir == tmp_path
    assert sl.parse_args(["--data-dir", "/x"]).data_dir == Path("/x")


def test_concurrency_and_durations_parse():
    args = sl.parse_args(["--concurrency", "2, 16", "--duration", "3.5", "--samples", "64", "--rounds", "3"])
    assert args.concurrency == [2, 16]
    assert args.duration == 3.5 and args.samples == 64 and args.rounds == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["--concurrency", "0"],
        ["--concurrency", "a,b"],
        ["--concurrency", ""],
        ["--duration", "0"],
        ["--duration", "nan"],
        ["--samples", "0"],
        ["--max-batch-delay-ms", "-1"],
        ["--warmup", "-1"],
    ],
)
def test_bad_arguments_exit(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        sl.parse_args(argv)
    assert exc.value.code == 2


def test_no_mlserver_clears_the_python():
    args = sl.parse_args(["--mlserver-python", "/some/python", "--no-mlserver"])
    assert args.mlserver_python is None


# -- statistics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    values = [random.Random(q).random() for _ in range(101)] + [5.0, 0.1]
    assert sl.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges():
    assert math.isnan(sl.percentile([], 50))
    assert sl.percentile([3.0], 99) == 3.0
    assert sl.percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        sl.percentile([1.0], 101)


def test_every_load_benchmark_reports_the_same_percentile():
    """One definition (benchmarks/stats.py): the reliability benchmark's p99 is serve_load's."""
    rel = load_benchmark("reliability.py", "reliability_for_percentile")
    assert rel.percentile is sl.percentile


def test_summarize_counts_and_units():
    lat = [0.001 * i for i in range(1, 101)]  # 1..100 ms
    r = sl.summarize("x", 8, lat, errors=3, elapsed_s=2.0, error_kinds={"HTTP 503": 3})
    assert r.ok == 100 and r.errors == 3
    assert r.rps == pytest.approx(50.0)
    assert r.p50_ms == pytest.approx(50.5)
    assert r.p99_ms == pytest.approx(99.01)
    assert r.mean_ms == pytest.approx(50.5)
    assert r.error_kinds == {"HTTP 503": 3}


def test_summarize_without_successes():
    r = sl.summarize("x", 1, [], errors=4, elapsed_s=0.0)
    assert r.rps == 0.0 and math.isnan(r.p50_ms) and r.errors == 4


def test_table_and_markdown_hold_every_row():
    rows = [sl.summarize("lrbnn", c, [0.002, 0.004], 0, 1.0) for c in (1, 32)]
    table = sl.format_table(rows)
    assert "req/s" in table and table.count("lrbnn") == 2
    md = sl.format_markdown(rows)
    assert md.splitlines()[0].startswith("| server | c |") and md.count("| lrbnn |") == 2


def test_targets():
    res = [
        sl.summarize("lrbnn", 1, [0.003] * 10, 0, 1.0),
        sl.summarize("mlserver", 1, [0.010] * 10, 0, 1.0),
        sl.summarize("lrbnn", 32, [0.050] * 300, 0, 1.0),
        sl.summarize("mlserver", 32, [0.040] * 100, 0, 1.0),
    ]
    t = sl.evaluate_targets(res, "lrbnn", "mlserver", {"ratio": 1.2})
    assert t["throughput_c32_ratio"]["value"] == 3.0 and t["throughput_c32_ratio"]["met"]
    assert not t["p99_lower_every_level"]["met"]  # 50 ms > 40 ms at c=32
    assert t["single_request_p50_ms"]["met"]
    assert t["uncertainty_p50_ratio"]["met"]
    assert "throughput_c32_ratio" not in sl.evaluate_targets(res, "lrbnn", None, None)


# -- the request generator -----------------------------------------------------------------------
def test_synthetic_rows_follow_the_manifest():
    specs = sl.feature_specs(MANIFEST)
    rows = sl.synthetic_rows(specs, 400, random.Random(0))
    assert len(rows) == 400 and all(len(r) == len(specs) for r in rows)
    for j, spec in enumerate(specs):
        col = [r[j] for r in rows if r[j] is not None]
        assert col, spec["name"]
        if spec["kind"] == "categorical":
            assert set(col) <= {float(i) for i in range(len(spec["categories"]))}
        else:
            assert spec["min"] - 1 <= min(col) and max(col) <= spec["max"] + 1
    missing = sum(v is None for r in rows for v in r) / (400 * len(specs))
    assert 0.02 < missing < 0.1


def test_synthetic_rows_are_seeded():
    specs = sl.feature_specs(MANIFEST)
    assert sl.synthetic_rows(specs, 5, random.Random(1)) == sl.synthetic_rows(specs, 5, random.Random(1))


def test_support2_rows(tmp_path):
    specs = [
        {"name": "age", "kind": "numeric"},
        {"name": "sex", "kind": "categorical", "categories": ["female", "male"]},
        {"name": "crea", "kind": "numeric"},
    ]
    (tmp_path / "support2").mkdir()
    (tmp_path / "support2" / "support2.csv").write_text(
        "age,sex,crea,hospdead\n70.5,male,1.2,0\n45,female,,1\n60,unknown,NA,0\n"
    )
    rows = sl.support2_rows(specs, tmp_path, 10, random.Random(0))
    assert sorted(rows, key=lambda r: r[0]) == [[45.0, 0.0, None], [60.0, None, None], [70.5, 1.0, 1.2]]


def test_support2_rows_need_every_column(tmp_path):
    (tmp_path / "support2").mkdir()
    (tmp_path / "support2" / "support2.csv").write_text("age\n70\n")
    with pytest.raises(ValueError, match="crea"):
        sl.support2_rows([{"name": "age", "kind": "numeric"}, {"name": "crea", "kind": "numeric"}],
                         tmp_path, 1, random.Random(0))  # fmt: skip


def test_v2_body_is_one_fp32_instance():
    body = json.loads(sl.v2_body([1.0, None, 3.5], 128))
    assert body == {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [[1.0, None, 3.5]]}],
        "parameters": {"samples": 128},
    }


def test_request_bodies_fall_back_to_synthetic(tmp_path):
    bodies, source = sl.request_bodies(MANIFEST, 7, 128, 0, tmp_path)  # no support2.csv there
    assert len(bodies) == 7 and "synthetic" in source
    body = json.loads(bodies[0])
    assert body["inputs"][0]["shape"] == [1, len(sl.feature_specs(MANIFEST))]


def test_cycle_wraps():
    gen = lg.cycle([b"a", b"b", b"c"], start=2)
    assert [next(gen) for _ in range(4)] == [b"c", b"a", b"b", b"c"]


# -- the load generator (a fake client) ----------------------------------------------------------
class _Resp:
    def __init__(self, status: int) -> None:
        self.status_code = status


class _FakeClient:
    def __init__(self, fail_every: int = 0) -> None:
        self.calls = 0
        self.inflight = 0
        self.max_inflight = 0
        self.fail_every = fail_every

    async def post(self, url, content, headers):
        self.calls += 1
        n = self.calls
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(0.001)
            if self.fail_every and n % self.fail_every == 0:
                if n % (2 * self.fail_every) == 0:
                    raise ConnectionError("reset")
                return _Resp(503)
            return _Resp(200)
        finally:
            self.inflight -= 1


def test_closed_loop_respects_concurrency_and_cap():
    client = _FakeClient()
    out = asyncio.run(lg.closed_loop(client, "u", [b"x"], concurrency=4, duration_s=10.0, max_requests=40))
    assert client.calls == 40 and len(out.latencies_s) == 40 and out.errors == 0
    assert client.max_inflight == 4
    assert out.elapsed_s < 5


def test_closed_loop_counts_errors_by_kind():
    client = _FakeClient(fail_every=5)
    out = asyncio.run(lg.closed_loop(client, "u", [b"x"], concurrency=2, duration_s=10.0, max_requests=20))
    assert len(out.latencies_s) + out.errors == 20
    assert out.error_kinds == {"HTTP 503": 2, "ConnectionError": 2}


def test_closed_loop_stops_at_the_deadline():
    client = _FakeClient()
    out = asyncio.run(lg.closed_loop(client, "u", [b"x"], concurrency=2, duration_s=0.05, max_requests=10**9))
    assert 0 < client.calls < 10**9 and out.elapsed_s < 1.0


def test_client_cpu_share():
    r = sl.summarize("x", 1, [0.001], 0, elapsed_s=2.0, client_cpu_s=0.5)
    assert sl._share(r) == "25%"
    assert sl._share(sl.summarize("x", 1, [0.001], 0, elapsed_s=2.0)) == "-"
    assert "client CPU" in sl.format_table([r]) and "25%" in sl.format_markdown([r])


def test_closed_loop_records_client_cpu():
    out = asyncio.run(
        lg.closed_loop(_FakeClient(), "u", [b"x"], concurrency=2, duration_s=10.0, max_requests=10)
    )
    assert out.cpu_s >= 0.0


def test_server_cpu_per_request():
    r = sl.summarize("x", 1, [0.001] * 50, 0, elapsed_s=1.0, server_cpu_s=0.1)
    assert r.server_cpu_ms_per_req == pytest.approx(2.0)
    assert math.isnan(sl.summarize("x", 1, [], 1, elapsed_s=1.0, server_cpu_s=0.1).server_cpu_ms_per_req)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_tree_cpu_seconds_counts_this_process():
    import os

    before = procfs.tree_cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    assert procfs.tree_cpu_seconds(os.getpid()) >= before > 0


# -- the wrk client --------------------------------------------------------------------------------
def test_wrk_script_embeds_every_body_verbatim():
    bodies = [b'{"a":[1,2]}', b'{"b":"x\\"y"}']
    script = lg.wrk_script(bodies)
    for b in bodies:
        assert f"[==[{b.decode()}]==]" in script
    with pytest.raises(ValueError, match="delimiter"):
        lg.wrk_script([b'{"a":"]==]"}'])


def test_parse_wrk_output_expands_the_histogram_and_counts_errors():
    text = "Running 1s test\nWRK_SUMMARY 10 2000000 0 1 0 2 0\nWRK_HISTOGRAM 1000:3,2500:5,90000:2\n"
    out = lg.parse_wrk_output(text)
    assert out.elapsed_s == 2.0
    assert out.errors == 3 and out.error_kinds == {"read": 1, "HTTP status": 2}
    # 10 responses, 2 of them non-2xx: 8 latencies kept, the two slowest dropped
    assert sorted(out.latencies_s) == [0.001] * 3 + [0.0025] * 5
    r = sl.summarize("w", 1, out.latencies_s, out.errors, out.elapsed_s, out.error_kinds)
    assert r.ok == 8 and r.rps == 4.0


def test_parse_wrk_output_rejects_other_text():
    with pytest.raises(ValueError, match="wrk script"):
        lg.parse_wrk_output("Requests/sec: 100\n")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/install-system-deps.sh)")
def test_wrk_against_a_local_server_counts_answers_and_bodies(tmp_path):
    """A real wrk run on a tiny HTTP server: every answer counted, each body sent, 503s are errors."""
    import http.server
    import threading

    seen: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(body)
            status = 503 if body == b'{"fail":1}' else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = tmp_path / "s.lua"
        bodies = [b'{"ok":1}', b'{"ok":2}', b'{"fail":1}']
        script.write_text(lg.wrk_script(bodies))
        url = f"http://127.0.0.1:{server.server_address[1]}/infer"
        out = lg.run_wrk(url, script, concurrency=2, duration_s=1.0, timeout_s=5.0)
    finally:
        server.shutdown()
    assert set(seen) == set(bodies)
    answered = len(out.latencies_s) + out.error_kinds.get("HTTP status", 0)
    assert abs(answered - len(seen)) <= 2  # the in-flight requests at wrk's deadline
    assert out.error_kinds.get("HTTP status", 0) == pytest.approx(len(seen) / 3, rel=0.2, abs=3)
    assert out.elapsed_s > 0.9 and out.cpu_s >= 0.0


# -- the bare-ASGI baseline ---------------------------------------------------------------------------
def _level(server: str, c: int, cpu_ms: float) -> object:
    return sl.LevelResult(server, c, 100, 0, 1.0, 100.0, 1.0, 1.0, 1.0, 1.0, server_cpu_ms_per_req=cpu_ms)


def test_fixed_path_cost_is_server_cpu_over_the_bare_baseline_per_level():
    results = [
        _level("lrbnn", 1, 3.0),
        _level("bare-asgi", 1, 0.5),
        _level("lrbnn", 32, 1.0),
        _level("bare-asgi", 32, 0.4),
        _level("mlserver", 32, 2.0),
        _level("lrbnn", 128, 1.0),  # no baseline at this level: no row
    ]
    rows = sl.fixed_path_cost(results, ["lrbnn"])
    assert [(r["server"], r["concurrency"]) for r in rows] == [("lrbnn", 1), ("lrbnn", 32)]
    assert [r["ratio"] for r in rows] == pytest.approx([6.0, 2.5])
    assert sl.fixed_path_cost([_level("lrbnn", 1, 3.0), _level("bare-asgi", 1, math.nan)], ["lrbnn"]) == []


def test_bare_asgi_parses_the_body_and_answers_the_recorded_bytes(tmp_path, monkeypatch):
    answer = b'{"outputs": [{"name": "mean", "data": [0.25]}]}'
    (tmp_path / "answer.json").write_bytes(answer)
    monkeypatch.setenv("LRBNN_BARE_ANSWER", str(tmp_path / "answer.json"))
    bare = load_benchmark("bare_asgi.py", "bare_asgi_under_test")

    async def call(method: str, body: bytes) -> list[dict]:
        chunks = [{"type": "http.request", "body": body[:3], "more_body": True}]
        chunks.append({"type": "http.request", "body": body[3:], "more_body": False})
        sent: list[dict] = []

        async def receive() -> dict:
            return chunks.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        await bare.app({"type": "http", "method": method, "path": "/x"}, receive, send)
        return sent

    sent = asyncio.run(call("POST", b'{"inputs": []}'))
    assert (
        sent[0]["status"] == 200 and dict(sent[0]["headers"])[b"content-length"] == str(len(answer)).encode()
    )
    assert sent[1]["body"] == answer
    with pytest.raises(json.JSONDecodeError):  # it really parses what it is sent
        asyncio.run(call("POST", b"{not json"))
    assert asyncio.run(call("GET", b""))[0]["status"] == 200  # the readiness probe

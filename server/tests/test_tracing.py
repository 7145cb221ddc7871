"""OpenTelemetry spans per request (the SDK's in-memory exporter), W3C traceparent honoured; nothing loaded when off.

The server runs in this process (a real App on real ports) so the exporter can be read;
requests go over real HTTP and gRPC connections.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
import requests
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.grpc import service_pb2, service_pb2_grpc

from model_store.testing import ModelSpec, write_dense_model, write_model_repository, write_slow_model
from server.app import App
from ops.tracing import TRACE_FLUSH_TIMEOUT_S
from server.settings import Settings
from server.testing import ServerProcess

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})


def settings(repo: Path, **kwargs) -> Settings:
    return Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0, **kwargs)


async def traced_app(repo: Path, **kwargs) -> tuple[App, InMemorySpanExporter]:
    """A started server whose spans are kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App(settings(repo, trace=True, **kwargs), tracer_provider=provider)
    await app.start()
    return app, exporter


def by_trace(exporter: InMemorySpanExporter) -> dict[int, dict[str, object]]:
    out: dict[int, dict[str, object]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.context.trace_id, {})[span.name] = span
    return out


def check_request_trace(spans: dict[str, object], model: str, outcome: str) -> None:
    root = spans[f"infer {model}"]
    assert root.kind is SpanKind.SERVER and root.attributes["fleetserve.outcome"] == outcome
    phases = [spans[name] for name in ("receive", "queue", "execute", "respond")]
    assert all(p.parent.span_id == root.context.span_id for p in phases)
    assert phases[0].start_time == root.start_time and phases[-1].end_time == root.end_time
    for before, after in zip(phases, phases[1:]):
        assert before.end_time == after.start_time  # laid end to end
    assert all(p.end_time >= p.start_time for p in phases)


async def test_http_and_grpc_requests_become_spans_under_the_callers_trace(repo: Path):
    app, exporter = await traced_app(repo)
    try:
        body = json.dumps({"id": "h-1", "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                                    "data": [0.5] * 16}]})
        async with aiohttp.ClientSession() as session:
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=1"}
            async with session.post(f"http://127.0.0.1:{app.http_port}/v2/models/dense/infer", data=body,
                                    headers=headers) as reply:
                assert reply.status == 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="dense", id="g-1")
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
            request.raw_input_contents.append(bytes(64))
            await stub.ModelInfer(request)
            request.inputs[0].shape[:] = [1, 15]
            request.raw_input_contents[0] = bytes(60)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ModelInfer(request)
    finally:
        await app.stop()
    traces = by_trace(exporter)
    http = traces.pop(int(TRACE_ID, 16))
    check_request_trace(http, "dense", "OK")
    root = http["infer dense"]
    assert root.parent.span_id == int(PARENT_ID, 16) and root.parent.is_remote
    assert root.attributes["fleetserve.request_id"] == "h-1" and root.attributes["fleetserve.version"] == "1"
    assert len(traces) == 2  # the gRPC calls carried no traceparent: each starts its own trace
    grpc_bad, grpc_ok = sorted(traces.values(), key=lambda t: t["infer dense"].attributes["fleetserve.outcome"])
    check_request_trace(grpc_ok, "dense", "OK")
    assert grpc_ok["infer dense"].attributes["fleetserve.request_id"] == "g-1"
    bad = grpc_bad["infer dense"]
    assert bad.status.status_code is StatusCode.ERROR and bad.attributes["fleetserve.outcome"] == "INVALID_ARGUMENT"
    assert sorted(grpc_bad) == ["infer dense", "receive", "respond"]  # refused before the batcher


async def test_stream_requests_become_spans_under_the_streams_trace(repo: Path):
    """Each request of a ModelStreamInfer call is traced as a ModelInfer request is, its root parented to the
    stream's traceparent: one answered, one refused after decoding (a wrong shape), one whose bytes are no
    request, each with its own outcome; the stream goes on after the failures."""
    app, exporter = await traced_app(repo)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            good = service_pb2.ModelInferRequest(model_name="dense", id="s-ok")
            good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
            good.raw_input_contents.append(bytes(64))
            bad = service_pb2.ModelInferRequest(model_name="dense", id="s-bad")
            bad.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 15])
            bad.raw_input_contents.append(bytes(60))
            unknown = service_pb2.ModelInferRequest(model_name="nosuch", id="s-unknown")
            call = stub.ModelStreamInfer(metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),))
            for request in (good, bad, unknown):
                await call.write(request)
            await call.done_writing()
            replies = {r.infer_response.id: r.error_message async for r in call}
        assert replies["s-ok"] == "" and replies["s-bad"] and replies["s-unknown"]
    finally:
        await app.stop()
    roots = {s.attributes["fleetserve.request_id"]: s for s in exporter.get_finished_spans() if s.name.startswith("infer")}
    assert sorted(roots) == ["s-bad", "s-ok", "s-unknown"]
    assert all(r.context.trace_id == int(TRACE_ID, 16) and r.parent.span_id == int(PARENT_ID, 16)
               for r in roots.values())
    assert {k: r.attributes["fleetserve.outcome"] for k, r in roots.items()} == {
        "s-ok": "OK", "s-bad": "INVALID_ARGUMENT", "s-unknown": "NOT_FOUND"}
    ok = roots["s-ok"]
    spans = {s.name: s for s in exporter.get_finished_spans() if s.parent is not None
             and s.parent.span_id == ok.context.span_id}
    check_request_trace({"infer dense": ok, **spans}, "dense", "OK")
    assert ok.attributes["fleetserve.version"] == "1"


def test_tracing_off_loads_no_opentelemetry(repo: Path):
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from server.app import App
        from server.settings import Settings

        async def main():
            app = App(Settings(model_repository=Path({str(repo)!r}), host="127.0.0.1",
                               grpc_port=0, http_port=0, metrics_port=0))
            await app.start()
            await app.stop()

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        print("clean")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and "clean" in result.stdout, result.stdout + result.stderr


async def test_failed_requests_spans_carry_the_request_and_the_outcome_the_metrics_count(tmp_path: Path):
    """A failed request's span names its request id and version, and a gRPC call cut at its deadline is
    DEADLINE_EXCEEDED there as in the metrics and the request log, not CANCELLED."""
    repo = write_model_repository(tmp_path, {
        "dense": ModelSpec(write_dense_model),
        "slow": ModelSpec(lambda p: write_slow_model(p, features=1024, repeats=256), config="max_batch_size: 16\n"),
    })
    app, exporter = await traced_app(repo)
    try:
        body = json.dumps({"id": "h-bad", "inputs": [{"name": "INPUT0", "shape": [1, 15], "datatype": "FP32",
                                                      "data": [0.5] * 15}]})
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{app.http_port}/v2/models/dense/infer", data=body) as reply:
                assert reply.status == 400
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="slow", id="g-late")
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[16, 1024])
            request.raw_input_contents.append(bytes(16 * 1024 * 4))
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.ModelInfer(request, timeout=0.02)  # the batch runs far longer
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            request.model_name, request.id = "nosuch", "g-unknown"
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ModelInfer(request)
    finally:
        await app.stop()
    roots = {s.attributes["fleetserve.request_id"]: s for s in exporter.get_finished_spans() if s.name.startswith("infer")}
    unknown = roots.pop("g-unknown")  # named like the metrics' label for it: no unbounded span names
    assert unknown.name == "infer" and unknown.attributes["fleetserve.model"] == "nosuch"
    assert unknown.attributes["fleetserve.outcome"] == "NOT_FOUND"
    assert sorted(roots) == ["g-late", "h-bad"]
    assert roots["h-bad"].attributes["fleetserve.outcome"] == "INVALID_ARGUMENT"
    late_span = roots["g-late"]
    assert late_span.attributes["fleetserve.outcome"] == "DEADLINE_EXCEEDED"
    assert late_span.status.status_code is StatusCode.ERROR and late_span.status.description == "DEADLINE_EXCEEDED"
    assert all(s.attributes["fleetserve.version"] == "1" for s in roots.values())


async def test_a_body_the_http_layer_refuses_is_the_callers_error_in_its_span_not_internal(repo: Path):
    """413 and 415 are not counted (no request yet); their spans say what the caller did wrong, with no version."""
    app, exporter = await traced_app(repo, http_max_body_bytes=1000)
    try:
        url = f"http://127.0.0.1:{app.http_port}/v2/models/dense/infer"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=b"x" * 5000, headers={"traceparent": "not a traceparent"}) as reply:
                assert reply.status == 413
            async with session.post(url, data=b"{}", headers={"Content-Encoding": "br"}) as reply:
                assert reply.status == 415
    finally:
        await app.stop()
    roots = [s for s in exporter.get_finished_spans() if s.name.startswith("infer")]
    assert [(s.name, s.attributes["fleetserve.outcome"], s.status.status_code) for s in roots] == [
        ("infer", "RESOURCE_EXHAUSTED", StatusCode.ERROR), ("infer", "INVALID_ARGUMENT", StatusCode.ERROR)]
    assert roots[0].parent is None  # a malformed traceparent is ignored: a trace of its own


async def test_span_attributes_cut_long_request_ids_and_model_names(repo: Path):
    """Ids and unknown model names are the caller's: a span carries at most their first 256 characters."""
    app, exporter = await traced_app(repo)
    long_id = "i" * 100_000
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="dense", id=long_id)
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
            request.raw_input_contents.append(bytes(64))
            assert (await stub.ModelInfer(request)).id == long_id
            request.model_name, request.id = "n" * 5_000, "unknown"
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ModelInfer(request)
    finally:
        await app.stop()
    roots = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("infer")}
    assert roots["infer dense"].attributes["fleetserve.request_id"] == "i" * 256 + "...[cut: 100000 characters]"
    assert roots["infer"].attributes["fleetserve.model"] == "n" * 256 + "...[cut: 5000 characters]"


def test_trace_without_opentelemetry_installed_refuses_to_start_in_one_line(repo: Path, tmp_path: Path):
    hidden = tmp_path / "no_otel" / "opentelemetry"  # shadows the installed package, as if it were missing
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'opentelemetry'\")\n")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden.parent), str(root)]))
    result = subprocess.run([sys.executable, "-m", "server", "serve", "--model-repository", str(repo), "--host",
                             "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--trace"],
                            capture_output=True, text=True, timeout=60, cwd=root, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    last = result.stdout.splitlines()[-1]
    assert "cannot start: --trace needs OpenTelemetry" in last and "fleetserve[tracing]" in last, output


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_dense(server: ServerProcess, count: int) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    for _ in range(count):
        assert requests.post(f"{server.http_url}/v2/models/dense/infer", json=body, timeout=10).status_code == 200


def test_a_trace_collector_that_is_down_holds_up_neither_requests_nor_shutdown(repo: Path, monkeypatch):
    """Spans leave in the background; on shutdown those still queued get TRACE_FLUSH_TIMEOUT_S, where the SDK
    would wait 30 s (here each span is its own batch, each export retrying for seconds): the pod's grace period."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
    with ServerProcess(repo, "--trace", "--trace-exporter", "otlp", "--log-format", "json") as server:
        started = time.monotonic()
        post_dense(server, 5)
        assert time.monotonic() - started < 5
        started = time.monotonic()
        assert server.stop() == 0
        took = time.monotonic() - started
    assert took < TRACE_FLUSH_TIMEOUT_S + 8, f"shutdown took {took:.1f} s:\n{server.log}"
    records = [json.loads(line) for line in server.lines]
    assert any(r["message"].startswith("spans not exported 2 s into shutdown are dropped") for r in records)


def test_spans_still_queued_at_shutdown_are_exported(repo: Path):
    """The console exporter writes one JSON span per line; the batch (5 s apart) leaves when the server stops."""
    with ServerProcess(repo, "--trace", "--trace-exporter", "console") as server:
        post_dense(server, 1)
        assert server.stop() == 0
    spans = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert sorted(s["name"] for s in spans) == ["execute", "infer dense", "queue", "receive", "respond"]
    assert "spans not exported" not in server.log

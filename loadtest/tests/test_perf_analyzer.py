"""Triton's perf_analyzer drives fleetserve and the bare baseline (real binary, real servers).

perf_analyzer comes from ``python -m loadtest.perf_analyzer install``, which the README's test
command runs; without it these tests fail and say how to install it.
"""

import asyncio
import csv
import io
import json
import threading
from contextlib import contextmanager
from typing import Iterator

import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry

from loadtest import perf_analyzer, servers
from loadtest.perf_analyzer import PerfAnalyzerError, locate, parse_csv
from ops.gpu import GpuCollector
from ops.gpu_testing import FakeGpu, FakeNvml
from server.http_server import HttpListener, metrics_app

FLEETSERVE_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
4,1285.18,7,1505,1289,39,155,15,2,2962,3671,4052,5900
"""
BARE_CSV = """\
Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
4,5267.09,2,1,664,933,1025,1357
"""

# These tests check what perf_analyzer does against a server, not how fast: any window counts, so a busy
# machine cannot fail a run for windows that disagree (perf_analyzer's "Failed to obtain stable measurement").
ANY_WINDOWS = 1000


def test_its_csv_gives_throughput_latency_and_the_servers_queue_when_the_server_has_statistics():
    with_stats = parse_csv(FLEETSERVE_CSV)
    assert (with_stats.concurrency, with_stats.throughput) == (4, 1285.18)
    assert (with_stats.p50_ms, with_stats.p99_ms) == (2.962, 5.9)
    assert (with_stats.server_queue_us, with_stats.server_compute_infer_us) == (1289.0, 155.0)
    bare = parse_csv(BARE_CSV)
    assert (bare.throughput, bare.p90_ms, bare.server_queue_us) == (5267.09, 0.933, None)
    with pytest.raises(PerfAnalyzerError, match="found 0"):
        parse_csv(BARE_CSV.splitlines()[0])


def test_a_missing_perf_analyzer_is_reported_with_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert locate(tmp_path / "nothing") is None
    with pytest.raises(PerfAnalyzerError, match="python -m loadtest.perf_analyzer install"):
        perf_analyzer.require(tmp_path / "nothing")


def test_the_command_asks_for_the_load_the_bench_measures():
    pa = perf_analyzer.PerfAnalyzer(perf_analyzer.default_home() / "bin" / "perf_analyzer", None)
    args = perf_analyzer.command(pa, "127.0.0.1:9", "mlp", concurrency=64, streaming=True, batch=64, window_ms=500)
    joined = " ".join(args[1:])
    assert "-m mlp -u 127.0.0.1:9 -i grpc --async -b 64 --measurement-interval 500" in joined
    assert "--concurrency-range 64" in joined
    assert args[-1] == "--streaming"



def _inference_count(address: str, model: str) -> int:
    client = grpcclient.InferenceServerClient(address)
    try:
        stats = client.get_inference_statistics(model, as_json=True)
        return int(stats["model_stats"][0].get("inference_count", 0))
    finally:
        client.close()


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_perf_analyzer_drives_fleetserve_and_every_request_is_served(pa, tiny_server, streaming):
    before = _inference_count(tiny_server.grpc_address, "add_one")
    result = perf_analyzer.run(pa, tiny_server.grpc_address, "add_one", concurrency=8, streaming=streaming,
                               batch=4, stability_percent=ANY_WINDOWS, window_ms=300)
    served = _inference_count(tiny_server.grpc_address, "add_one") - before
    assert result.throughput > 100 and 0 < result.p50_ms <= result.p99_ms
    # Three windows of 0.3 s at the rate it reports were answered, and counted in rows by the server.
    assert served >= 0.9 * result.throughput * 0.9, (served, result)
    assert result.server_queue_us is not None and result.server_compute_infer_us is not None  # read from statistics


def test_perf_analyzer_drives_the_bare_baseline(pa):
    with servers.baseline("--model", "add_one") as bare:
        idle = bare.cpu_seconds()
        unary = perf_analyzer.run(pa, bare.address, "add_one", concurrency=8,
                                  stability_percent=ANY_WINDOWS, window_ms=300)
        stream = perf_analyzer.run(pa, bare.address, "add_one", concurrency=8, streaming=True,
                                   stability_percent=ANY_WINDOWS, window_ms=300)
        busy = bare.cpu_seconds()
    assert unary.throughput > 100 and stream.throughput > 100
    assert unary.server_queue_us is None  # the bare server keeps no statistics
    assert idle is not None and busy is not None and busy - idle > 0.1  # the bench's server CPU per request


def test_a_failed_run_says_what_perf_analyzer_said(pa, tiny_server):
    with pytest.raises(PerfAnalyzerError, match="unknown model 'nope'"):
        perf_analyzer.run(pa, tiny_server.grpc_address, "nope", concurrency=1,
                          stability_percent=ANY_WINDOWS, window_ms=100)


@contextmanager
def _gpu_metrics_endpoint(gpu: FakeGpu) -> Iterator[str]:
    """fleetserve's /metrics app over a GpuCollector that reads a fake NVML (this host may have no GPU)."""
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml({"gpu": gpu}), ["gpu"]))  # type: ignore[arg-type]
    listener = HttpListener(metrics_app(registry), "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(listener.start(), loop).result(10)
        yield f"127.0.0.1:{port}/metrics"
    finally:
        asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_collect_metrics_reads_the_gpu_from_fleetserves_metrics_as_from_tritons(pa, tiny_server):
    """perf_analyzer --collect-metrics parses Triton's nv_gpu_* names, keyed by gpu_uuid, written in full."""
    gpu = FakeGpu("GPU-5e1f", utilization_percent=42, memory_used_bytes=3_221_225_472,
                  memory_total_bytes=85_899_345_920, power_mw=187_500)
    with _gpu_metrics_endpoint(gpu) as url:
        text = perf_analyzer.run_csv(pa, tiny_server.grpc_address, "add_one", concurrency=1,
                                     stability_percent=ANY_WINDOWS, window_ms=300,
                                     extra=["--collect-metrics", "--metrics-url", url, "--metrics-interval", "100",
                                            "--verbose-csv"])
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["Avg GPU Utilization"] == "GPU-5e1f:0.42;"
    assert row["Avg GPU Power Usage"] == "GPU-5e1f:187.5;"
    assert row["Max GPU Memory Usage"] == "GPU-5e1f:3221225472;"  # not 3: the value written in full
    assert row["Total GPU Memory"] == "GPU-5e1f:85899345920;"


def _input_file(tmp_path, offset: float) -> str:
    """Two steps of add_one's INPUT0 (16 floats) with validation_data: INPUT0 + ``offset`` (1 is right)."""
    steps = [[float(i + step) for i in range(16)] for step in range(2)]
    data = {"data": [{"INPUT0": {"content": row, "shape": [16]}} for row in steps],
            "validation_data": [{"OUTPUT0": {"content": [x + offset for x in row], "shape": [16]}} for row in steps]}
    path = tmp_path / f"add_{offset:g}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_input_data_from_a_file_is_sent_and_each_answer_checked_against_its_validation_data(
        pa, tiny_server, tmp_path, protocol):
    address = tiny_server.grpc_address if protocol == "grpc" else tiny_server.http_address
    result = perf_analyzer.run(pa, address, "add_one", concurrency=2, protocol=protocol,
                               stability_percent=ANY_WINDOWS, window_ms=300,
                               extra=["--input-data", _input_file(tmp_path, 1.0)])
    assert result.throughput > 50
    with pytest.raises(PerfAnalyzerError, match="Output doesn't match expected output"):  # the check is real
        perf_analyzer.run(pa, address, "add_one", concurrency=1, protocol=protocol,
                          stability_percent=ANY_WINDOWS, window_ms=300,
                          extra=["--input-data", _input_file(tmp_path, 2.0)])


def test_an_open_loop_at_a_poisson_rate_over_http(pa, tiny_server):
    text = perf_analyzer.run_csv(pa, tiny_server.http_address, "add_one", concurrency=None, protocol="http",
                                 stability_percent=ANY_WINDOWS, window_ms=500, extra=["--request-rate-range", "200",
                                                       "--request-distribution", "poisson"])
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["Request Rate"] == "200" and 100 < float(row["Inferences/Second"]) < 300
    assert float(row["Server Queue"]) >= 0 and float(row["Server Compute Infer"]) > 0  # read from ModelStatistics


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_system_shared_memory_carries_the_tensors(pa, tiny_server, protocol):
    """perf_analyzer --shared-memory system: it registers its regions, every request names them for its input
    and its output, and the run succeeds; the regions are unregistered at its end."""
    address = tiny_server.grpc_address if protocol == "grpc" else tiny_server.http_address
    before = _inference_count(tiny_server.grpc_address, "add_one")
    result = perf_analyzer.run(pa, address, "add_one", concurrency=2, protocol=protocol,
                               stability_percent=ANY_WINDOWS, window_ms=300, timeout_s=60,
                               extra=["--shared-memory", "system", "--output-shared-memory-size", "64"])
    assert result.throughput > 0
    assert _inference_count(tiny_server.grpc_address, "add_one") > before
    client = grpcclient.InferenceServerClient(tiny_server.grpc_address)
    try:
        assert not client.get_system_shared_memory_status().regions  # perf_analyzer unregistered its own
    finally:
        client.close()

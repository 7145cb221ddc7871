"""Triton's perf_analyzer drives fleetserve and the bare baseline (real binary, real servers).

perf_analyzer comes from ``python -m loadtest.perf_analyzer install``, which the README's test
command runs; without it these tests fail and say how to install it.
"""

import pytest
import tritonclient.grpc as grpcclient

from loadtest import perf_analyzer, servers
from loadtest.perf_analyzer import PerfAnalyzerError, locate, parse_csv

FLEETSERVE_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
4,1285.18,7,1505,1289,39,155,15,2,2962,3671,4052,5900
"""
BARE_CSV = """\
Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
4,5267.09,2,1,664,933,1025,1357
"""


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
    assert "-m mlp -u 127.0.0.1:9 -i grpc --async --concurrency-range 64 -b 64 --measurement-interval 500" in joined
    assert args[-1] == "--streaming"


@pytest.fixture(scope="module")
def pa() -> perf_analyzer.PerfAnalyzer:
    found = locate()
    if found is None:
        pytest.fail(f"perf_analyzer is not installed; {perf_analyzer.INSTALL_HINT}")
    return found


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
                               batch=4, window_ms=300)
    served = _inference_count(tiny_server.grpc_address, "add_one") - before
    assert result.throughput > 100 and 0 < result.p50_ms <= result.p99_ms
    # Three windows of 0.3 s at the rate it reports were answered, and counted in rows by the server.
    assert served >= 0.9 * result.throughput * 0.9, (served, result)
    assert result.server_queue_us is not None and result.server_compute_infer_us is not None  # read from statistics


def test_perf_analyzer_drives_the_bare_baseline(pa):
    with servers.baseline("--model", "add_one") as bare:
        idle = bare.cpu_seconds()
        unary = perf_analyzer.run(pa, bare.address, "add_one", concurrency=8, window_ms=300)
        stream = perf_analyzer.run(pa, bare.address, "add_one", concurrency=8, streaming=True, window_ms=300)
        busy = bare.cpu_seconds()
    assert unary.throughput > 100 and stream.throughput > 100
    assert unary.server_queue_us is None  # the bare server keeps no statistics
    assert idle is not None and busy is not None and busy - idle > 0.1  # the bench's server CPU per request


def test_a_failed_run_says_what_perf_analyzer_said(pa, tiny_server):
    with pytest.raises(PerfAnalyzerError, match="unknown model 'nope'"):
        perf_analyzer.run(pa, tiny_server.grpc_address, "nope", concurrency=1, window_ms=100)

"""Short, bounded load tests against a real fleetserve (and the bare baseline) on 127.0.0.1."""

import asyncio
import gc
import json
import math
import socket
import sys

import grpc
import numpy as np
import pytest

from loadtest.baseline import BareService, TensorSpec, start_baseline
from loadtest.cli import main
from loadtest.runner import LoadRunner, RunSettings
from loadtest.wire import SERVICE
from server.protos import grpc_service_pb2 as pb

QUICK = dict(warmup_s=0.2, window_s=0.3, stable_windows=2, tolerance=0.5, max_duration_s=1.5)
QUICK_ARGS = ["--warmup-s", "0.2", "--window-s", "0.3", "--stable-windows", "2", "--tolerance", "0.5",
              "--max-duration-s", "1.5", "--quiet"]


def settings(address, **overrides):
    return RunSettings(targets=(address,), model="add_one", slo_ms=1000.0, **{**QUICK, **overrides})


def address(server, transport):
    return server.http_address if transport.startswith("http") else server.grpc_address


def assert_healthy(point):
    assert point.ok > 0 and point.throughput_rps > 0
    assert point.errors == {} and point.error_rate == 0
    assert 0 < point.latency_ms.p50 <= point.latency_ms.p99 <= point.latency_ms.max
    assert point.goodput_rps == pytest.approx(point.throughput_rps)
    assert point.loadgen_cpu_cores > 0


@pytest.mark.parametrize("transport", ["unary", "stream", "http", "http-binary"])
async def test_closed_loop_reads_back_batch_statistics(tiny_server, transport):
    async with LoadRunner(settings(address(tiny_server, transport), transport=transport)) as runner:
        point = await runner.run_point("concurrency", 8)
    assert_healthy(point)
    assert point.batch_sizes and all(1 <= size <= 32 for size in point.batch_sizes)
    assert point.mean_batch_size is not None and point.mean_batch_size >= 1
    assert point.duration_s == pytest.approx(point.measured_windows * 0.3)
    assert point.ok_of_arrivals is None  # closed loop: no schedule to count arrivals by


@pytest.mark.parametrize("transport", ["unary", "stream", "http", "http-binary"])
async def test_open_loop_sends_the_offered_rate(tiny_server, transport):
    async with LoadRunner(settings(address(tiny_server, transport), transport=transport, rows=3)) as runner:
        point = await runner.run_point("rate", 200)
    assert_healthy(point)
    assert point.throughput_rps == pytest.approx(200, rel=0.5)  # Poisson counts over ~0.6 s
    assert point.rows_per_s == pytest.approx(3 * point.throughput_rps)
    assert point.send_lag_p99_ms is not None and point.dropped == 0
    # The same requests counted by their scheduled arrival instead of their completion: at 200/s
    # with millisecond latencies only those near a window boundary differ. A stall there moves more:
    # 0.15 s of a shared machine's pause moves 30, a quarter of the ~120 requests (counting the 0.2 s
    # warm-up's 40 arrivals in would still fail).
    assert point.ok_of_arrivals is not None
    assert abs(point.ok_of_arrivals - point.ok) <= max(5, 0.25 * point.ok), (
        f"{point.ok_of_arrivals} answered arrivals against {point.ok} completions in the windows; "
        f"send lag p99 {point.send_lag_p99_ms} ms, latency p99 {point.latency_ms.p99} ms max {point.latency_ms.max} ms"
    )


async def test_the_load_generator_walks_only_its_own_garbage_while_it_measures(tiny_server):
    """Collected and frozen before the load (driver.py): a full collection then stalls no request for long."""
    frozen = []
    runner = LoadRunner(settings(tiny_server.grpc_address), progress=lambda line: frozen.append(gc.get_freeze_count()))
    async with runner:
        point = await runner.run_point("rate", 200)
    assert_healthy(point)
    assert frozen and all(count > 1000 for count in frozen)  # the process's modules, channels, schedule ...
    assert gc.get_freeze_count() == 0  # and released after the point


async def test_bare_baseline_answers_unary_and_stream_with_ids_echoed():
    service = BareService("add_one", [TensorSpec.parse("INPUT0:FP32:16")], [TensorSpec.parse("OUTPUT0:FP32:16")])
    server, port = await start_baseline(service)
    try:
        for transport in ("unary", "stream"):
            async with LoadRunner(settings(f"127.0.0.1:{port}", transport=transport)) as runner:
                point = await runner.run_point("concurrency", 4)
            assert_healthy(point)  # a stream response with a wrong id would stall its slot: no throughput
            assert point.batch_sizes == {} and point.mean_batch_size is None  # no ModelStatistics there
    finally:
        await server.stop(0)


async def test_a_parked_bare_server_answers_unary_requests_a_turn_later_together():
    service = BareService("add_one", [TensorSpec.parse("INPUT0:FP32:16")], [TensorSpec.parse("OUTPUT0:FP32:16")],
                          park=True)
    server, port = await start_baseline(service)
    try:
        async with LoadRunner(settings(f"127.0.0.1:{port}")) as runner:
            point = await runner.run_point("concurrency", 16)
        assert_healthy(point)
        assert service.largest_release > 1 and not service._parked  # released together, none left behind
    finally:
        await server.stop(0)


async def test_a_server_that_does_not_echo_ids_is_reported_not_mismeasured():
    class Forgetful(BareService):
        def answer(self, request):
            request.id = ""
            return super().answer(request)

    service = Forgetful("add_one", [TensorSpec.parse("INPUT0:FP32:16")], [TensorSpec.parse("OUTPUT0:FP32:16")])
    server, port = await start_baseline(service)
    try:
        async with LoadRunner(settings(f"127.0.0.1:{port}", transport="stream", max_duration_s=0.8)) as runner:
            point = await runner.run_point("concurrency", 2)
    finally:
        await server.stop(0)
    assert point.ok == 0 and point.unmatched_responses == 2 and not point.stable


def test_command_writes_reports_and_gates_on_assert(tiny_server, tmp_path, capsys):
    args = ["loadtest", "--target", tiny_server.grpc_address, "--model", "add_one", "--concurrency", "2",
            "--warmup-s", "0.2", "--window-s", "0.3", "--stable-windows", "2", "--tolerance", "0.5",
            "--max-duration-s", "1.5", "--slo-ms", "1000", "--quiet", "--out", str(tmp_path), "--name", "run"]
    assert main([*args, "--assert", "errors<=0,p99<10s,goodput>1"]) == 0
    out = capsys.readouterr().out
    assert "PASS  errors<=0" in out and "c=2" in out
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["points"][0]["ok"] > 0 and data["command"][:2] == ["fleetserve", "loadtest"]
    assert (tmp_path / "run.csv").exists() and (tmp_path / "run.png").stat().st_size > 0
    assert main([*args, "--assert", "throughput>1e9"]) == 1
    assert "FAIL  throughput>1e9" in capsys.readouterr().out


@pytest.mark.parametrize("transport", ["unary", "http"])
def test_command_reports_an_unknown_model_in_one_line(tiny_server, capsys, transport):
    assert main(["--target", address(tiny_server, transport), "--transport", transport, "--model", "nope",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "loadtest failed" in err and "nope" in err
    assert ("HTTP 404" if transport == "http" else "NOT_FOUND") in err


async def test_a_sender_that_fails_fails_the_level_rather_than_reporting_it_empty(tiny_server):
    async with LoadRunner(settings(tiny_server.grpc_address)) as runner:
        with pytest.raises(RuntimeError, match="arrival rate must be a positive number, got inf"):
            await runner.run_point("rate", math.inf)  # the command refuses it; here the sender's schedule fails


@pytest.mark.parametrize("transport", ["unary", "http", "http-binary"])
async def test_rejected_requests_are_counted_by_status(tiny_server, tmp_path, transport):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, INPUT0=np.ones((1, 16), dtype=np.int32))  # the model takes FP32
    async with LoadRunner(settings(address(tiny_server, transport), transport=transport, input_file=wrong,
                                   max_duration_s=0.8)) as runner:
        point = await runner.run_point("concurrency", 2)
    assert point.ok == 0 and point.requests > 0
    assert point.errors == {("HTTP 400" if transport.startswith("http") else "INVALID_ARGUMENT"): point.requests}


@pytest.mark.parametrize("transport", ["unary", "stream", "http", "http-binary"])
def test_command_refuses_to_measure_requests_the_server_rejects(tiny_server, tmp_path, capsys, transport):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, INPUT0=np.ones((1, 16), dtype=np.int32))  # the model takes FP32
    assert main(["--target", address(tiny_server, transport), "--transport", transport, "--model", "add_one",
                 "--input-file", str(wrong), "--concurrency", "1", *QUICK_ARGS]) == 2
    captured = capsys.readouterr()
    assert "c=1" not in captured.out and captured.err.count("\n") <= 2 and "loadtest failed" in captured.err
    assert ("HTTP 400" if transport.startswith("http") else "INVALID_ARGUMENT") in captured.err
    assert "FP32" in captured.err  # the server's own reason


@pytest.mark.parametrize("transport", ["unary", "http"])
def test_an_answer_that_depends_on_load_does_not_stop_the_run(tiny_server, tmp_path, capsys, transport):
    """The probe's deadline passes (as it may under load): the run is made and counts the deadlines."""
    inputs = tmp_path / "inputs.npz"  # no metadata call: only the requests carry the 1 us deadline
    np.savez(inputs, INPUT0=np.ones((1, 16), dtype=np.float32))
    assert main(["--target", address(tiny_server, transport), "--transport", transport, "--model", "add_one",
                 "--input-file", str(inputs), "--timeout-s", "0.000001", "--concurrency", "1", *QUICK_ARGS]) == 0
    assert "DEADLINE_EXCEEDED" in capsys.readouterr().out


@pytest.mark.parametrize("transport", ["unary", "http"])
def test_command_names_an_unreachable_target(tiny_server, capsys, transport):
    with socket.socket() as unused:  # bound, never listening: connections to it are refused
        unused.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{unused.getsockname()[1]}"
        targets = f"{address(tiny_server, transport)},{dead}"
        assert main(["--target", targets, "--transport", transport, "--model", "add_one", "--concurrency", "2",
                     *QUICK_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "loadtest failed" in err and dead in err and "UNAVAILABLE" in err


@pytest.mark.parametrize("flag, value", [("--rate", "100,inf"), ("--rate", "nan"), ("--slo-ms", "nan"),
                                         ("--warmup-s", "nan")])
def test_command_rejects_numbers_that_are_not_finite(capsys, flag, value):
    with pytest.raises(SystemExit) as exited:
        main(["--target", "127.0.0.1:1", "--model", "m", flag, value, "--quiet"])
    assert exited.value.code == 2 and flag in capsys.readouterr().err


def test_command_rejects_inconsistent_windows(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "m", "--warmup-s", "5", "--max-duration-s", "6"])
    assert "cannot fit the warm-up" in capsys.readouterr().err


@pytest.mark.parametrize("transport", ["unary", "http-binary"])
async def test_two_load_generator_processes_share_the_load(tiny_server, transport):
    async with LoadRunner(settings(address(tiny_server, transport), transport=transport, processes=2,
                                   max_duration_s=2.0)) as runner:
        point = await runner.run_point("concurrency", 4)
    assert_healthy(point)
    assert point.loadgen_cpu_cores >= point.loadgen_busiest_process


@pytest.mark.parametrize("flag, value, message", [
    ("--concurrency", "1,8,8", "8 given more than once"), ("--rate", "100,100.0", "100 given more than once"),
    ("--concurrency", "8.0", "expected comma-separated whole numbers"),
])
def test_command_rejects_a_level_given_twice(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["--target", "127.0.0.1:1", "--model", "m", flag, value, "--quiet"])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_command_rejects_a_target_given_twice(capsys):
    """One server listed twice would be planned as two replicas, each with half its capacity."""
    with pytest.raises(SystemExit) as exited:
        main(["--target", "127.0.0.1:1,127.0.0.1:2", "--target", "127.0.0.1:1", "--model", "m", "--quiet"])
    assert exited.value.code == 2 and "--target 127.0.0.1:1 given more than once" in capsys.readouterr().err


def test_command_rejects_rows_with_an_input_file(tmp_path, capsys):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, INPUT0=np.ones((1, 16), dtype=np.float32))
    with pytest.raises(SystemExit) as exited:
        main(["--target", "127.0.0.1:1", "--model", "m", "--input-file", str(inputs), "--rows", "8", "--quiet"])
    assert exited.value.code == 2 and "the file's arrays are sent as stored" in capsys.readouterr().err


def test_command_rejects_an_input_file_it_cannot_send_before_connecting(tmp_path, capsys):
    npy = tmp_path / "inputs.npy"
    np.save(npy, np.ones((1, 16), dtype=np.float32))
    with pytest.raises(SystemExit) as exited:  # the target does not exist: the file is checked first
        main(["--target", "127.0.0.1:1", "--model", "m", "--input-file", str(npy), "--quiet"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "usage:" in err and f"--input-file {npy}: a .npy file holds one" in err


def test_a_deadline_shorter_than_the_metadata_call_is_measured(tiny_server, capsys):
    """--timeout-s is the requests' deadline: reading the model's metadata is not held to it."""
    assert main(["--target", tiny_server.grpc_address, "--model", "add_one", "--timeout-s", "0.000001",
                 "--concurrency", "1", *QUICK_ARGS]) == 0
    assert "DEADLINE_EXCEEDED" in capsys.readouterr().out


async def _bare(service):
    server, port = await start_baseline(service)
    return server, f"127.0.0.1:{port}"


class _FixedShape(BareService):
    """A model that does not batch: its metadata gives INPUT0 a fixed shape [4]."""

    async def model_metadata(self, request, context):
        response = pb.ModelMetadataResponse(name=self.model, versions=["1"], platform="bare")
        response.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
        return response


async def test_rows_are_counted_only_where_the_model_has_a_batch_dimension(tmp_path):
    server, target = await _bare(_FixedShape("fixed", [TensorSpec.parse("INPUT0:FP32:4")], []))
    try:
        with pytest.raises(ValueError, match="--rows 4: the model's inputs have no batch dimension"):
            async with LoadRunner(RunSettings(targets=(target,), model="fixed", rows=4, **QUICK)):
                pass
        inputs = tmp_path / "inputs.npz"
        np.savez(inputs, INPUT0=np.ones(4, dtype=np.float32))  # one inference of shape [4], not 4 rows
        async with LoadRunner(RunSettings(targets=(target,), model="fixed", input_file=inputs, **QUICK)) as runner:
            point = await runner.run_point("concurrency", 1)
        assert runner.rows_per_request == 1 and point.rows_per_s == point.throughput_rps > 0
    finally:
        await server.stop(0)


async def test_the_inputs_generated_are_reported(tiny_server):
    async with LoadRunner(settings(tiny_server.grpc_address, rows=3)) as runner:
        result = await runner.run([1], [])
    assert result.inputs == ["INPUT0 FP32 [3,16] random normal"]


def test_command_names_a_target_that_is_not_an_inference_server(capsys):
    async def serve_and_run():
        server = grpc.aio.server()  # a gRPC server with no services at all
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await asyncio.to_thread(main, ["--target", f"127.0.0.1:{port}", "--model", "m", *QUICK_ARGS]), port
        finally:
            await server.stop(0)

    code, port = asyncio.run(serve_and_run())
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") <= 2
    assert f"ModelMetadata on 127.0.0.1:{port}: UNIMPLEMENTED" in err and "not an Open Inference Protocol server?" in err


def test_command_refuses_a_stream_run_against_a_server_without_the_stream(capsys):
    class Unary(BareService):  # ModelInfer, no ModelStreamInfer (KServe's Python server, for one)
        def handlers(self):
            methods = {name.rsplit("/", 1)[1]: handler for name, handler in super().handlers()._method_handlers.items()
                       if not name.endswith("/ModelStreamInfer")}
            return grpc.method_handlers_generic_handler(SERVICE, methods)

    async def serve_and_run():
        server, target = await _bare(Unary("add_one", [TensorSpec.parse("INPUT0:FP32:16")], []))
        try:
            return await asyncio.to_thread(main, ["--target", target, "--transport", "stream", "--model", "add_one",
                                                  "--concurrency", "2", *QUICK_ARGS]), target
        finally:
            await server.stop(0)

    code, target = asyncio.run(serve_and_run())
    captured = capsys.readouterr()
    assert code == 2 and "c=2" not in captured.out
    assert f"ModelStreamInfer on {target}: UNIMPLEMENTED" in captured.err


def test_command_answers_a_web_server_that_is_not_an_inference_server_in_one_line(capsys):
    from aiohttp import web

    async def page(request):
        return web.Response(status=404, content_type="text/html",
                            text="<!DOCTYPE html>\n<html>\n<body>\n<p>Nothing here</p>\n</body>\n</html>\n")

    async def serve_and_run():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", page)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(main, ["--target", f"127.0.0.1:{port}", "--transport", "http", "--model",
                                                  "m", *QUICK_ARGS])
        finally:
            await runner.cleanup()

    assert asyncio.run(serve_and_run()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "HTTP 404: <!DOCTYPE html> <html> <body> <p>Nothing here</p>" in err


def test_command_over_http_to_a_server_that_does_not_speak_http_fails_in_one_line(capsys):
    async def not_http(reader, writer):  # what a gRPC port answers an HTTP/1.1 request: an HTTP/2 frame
        await reader.read(1024)
        writer.write(b"\x00\x00\x1e\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x04\x00\n\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def serve_and_run():
        server = await asyncio.start_server(not_http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(main, ["--target", f"127.0.0.1:{port}", "--transport", "http", "--model",
                                                  "m", *QUICK_ARGS]), port
        finally:
            server.close()
            await server.wait_closed()

    code, port = asyncio.run(serve_and_run())
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") <= 2
    assert f"GET http://127.0.0.1:{port}/v2/models/m: the answer is not HTTP/1.1 (a gRPC port?)" in err


def test_command_without_matplotlib_writes_the_other_files_and_still_gates(tiny_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an optional dependency
    assert main(["--target", tiny_server.grpc_address, "--model", "add_one", "--concurrency", "1", *QUICK_ARGS,
                 "--out", str(tmp_path), "--name", "run", "--assert", "throughput>1e9"]) == 1
    captured = capsys.readouterr()
    assert "FAIL  throughput>1e9" in captured.out and "no run.png: matplotlib is not installed" in captured.err
    assert (tmp_path / "run.json").exists() and (tmp_path / "run.csv").exists() and not (tmp_path / "run.png").exists()


@pytest.fixture(scope="module")
def sequence_server(tmp_path_factory):
    from model_store.stateful_testing import ACCUMULATOR_SEQUENCE_BATCHING, write_accumulator_model
    from model_store.testing import ModelSpec, write_model_repository
    from server.testing import ServerProcess

    config = "max_batch_size: 8\n" + ACCUMULATOR_SEQUENCE_BATCHING.format(
        idle_us=5_000_000, initial="", strategy="oldest { max_queue_delay_microseconds: 1000 }")
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {"acc": ModelSpec(write_accumulator_model,
                                                                                      config=config)})
    with ServerProcess(repo) as server:
        yield server


def _failures(server) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        stats = client.get_inference_statistics("acc", as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["fail"].get("count", 0))


@pytest.mark.parametrize("transport", ["unary", "stream"])
def test_a_sequence_model_is_driven_in_sequences(sequence_server, capsys, transport):
    args = ["--target", sequence_server.grpc_address, "--transport", transport, "--model", "acc",
            "--warmup-s", "0.2", "--window-s", "0.3", "--stable-windows", "2", "--tolerance", "0.9",
            "--max-duration-s", "1.5", "--quiet"]
    before = _failures(sequence_server)

    assert main([*args, "--concurrency", "4", "--sequence-length", "5", "--assert", "errors<=0"]) == 0

    assert "PASS  errors<=0" in capsys.readouterr().out
    assert _failures(sequence_server) == before  # every request in a live sequence, in order
    assert main([*args, "--concurrency", "2"]) == 2  # without sequences the probe's refusal is the answer
    assert "model 'acc' runs sequences: a request needs a sequence_id" in capsys.readouterr().err


@pytest.mark.parametrize("extra, says", [
    (["--rate", "50"], "--sequence-length needs --concurrency"),
    (["--concurrency", "2", "--transport", "http"], "--sequence-length needs a gRPC transport"),
])
def test_sequences_need_a_closed_loop_over_grpc(capsys, extra, says):
    with pytest.raises(SystemExit):
        main(["--target", "127.0.0.1:9", "--model", "acc", "--sequence-length", "3", "--quiet", *extra])
    assert says in capsys.readouterr().err

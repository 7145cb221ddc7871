"""Shutdown's bounds, against real server processes: what a request gets when --drain-timeout ends in each
state (queued, in a running batch, on a stream), loads racing SIGTERM, and the REST listener's own bound."""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from functools import partial
from pathlib import Path

import aiohttp
import numpy as np
import requests
import tritonclient.grpc as tc
from aiohttp import web

from model_store.testing import ModelSpec, write_dense_model, write_model_repository, write_slow_model
from server.http_server import HttpListener
from server.testing import ServerProcess, scrape_metrics, wait_until

ROWS_RUNNING = 384  # about 3 s of MatMuls on one core: still running when a 1 s drain timeout ends


def slow_input(rows: int) -> list[tc.InferInput]:
    inp = tc.InferInput("INPUT0", [rows, 1024], "FP32")
    inp.set_data_from_numpy(np.ones((rows, 1024), np.float32))
    return [inp]


def post_queued(server: ServerProcess, results: dict[str, object]) -> None:
    """A one-row REST request to the slow model; its status and error (or the exception) in ``results["queued"]``."""
    body: dict = {"inputs": [{"name": "INPUT0", "shape": [1, 1024], "datatype": "FP32", "data": [1.0] * 1024}]}
    try:
        reply = requests.post(server.http_url + "/v2/models/slow/infer", json=body, timeout=30)
        results["queued"] = (reply.status_code, reply.json().get("error", ""))
    except Exception as exc:
        results["queued"] = exc


def test_when_the_drain_timeout_ends_each_request_is_answered_unavailable_saying_whether_it_ran(tmp_path: Path):
    """A batch longer than --drain-timeout used to be cut: gRPC callers got a bare CANCELLED, REST callers a
    closed connection with no response. Now each gets UNAVAILABLE / 503 saying whether it had run, and the
    server exits at once, not after the run."""
    repo = write_model_repository(tmp_path, {"slow": ModelSpec(
        partial(write_slow_model, features=1024, repeats=500),
        config="max_batch_size: 1024\ndynamic_batching { max_queue_delay_microseconds: 1000 }")})
    server = ServerProcess(repo, "--drain-timeout", "1").start()
    client = tc.InferenceServerClient(server.grpc_address)
    stream = tc.InferenceServerClient(server.grpc_address)
    replies: queue.Queue = queue.Queue()
    results: dict[str, object] = {}

    def running() -> None:
        try:
            results["running"] = client.infer("slow", slow_input(ROWS_RUNNING)).as_numpy("OUTPUT0").shape
        except Exception as exc:
            results["running"] = (exc.status(), exc.message())  # type: ignore[attr-defined]

    inflight = ("fleetserve_inflight_requests", frozenset({("model", "slow"), ("version", "1")}))
    depth = ("fleetserve_queue_depth", frozenset({("model", "slow"), ("version", "1")}))
    callers = [threading.Thread(target=running), threading.Thread(target=post_queued, args=(server, results))]
    stream.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        callers[0].start()
        assert wait_until(lambda: scrape_metrics(server.metrics_url).get(inflight, 0) >= 1), server.log
        callers[1].start()
        stream.async_stream_infer("slow", slow_input(1), request_id="s1")
        assert wait_until(lambda: scrape_metrics(server.metrics_url).get(depth) == 2), server.log
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(20)
        assert server.proc.wait(20) == 0, server.log
        took = time.monotonic() - signalled
        got = [replies.get(timeout=5) for _ in range(2)]  # the request's answer, then the stream's end
    finally:
        stream.stop_stream()
        stream.close()
        client.close()
        server.stop()
    assert results["running"] == ("StatusCode.UNAVAILABLE", "the server is shutting down: its drain timeout "
                                  "(--drain-timeout 1 s) ended while this request's batch was running; its result "
                                  "is lost"), results
    assert results["queued"] == (503, "the server is shutting down: its drain timeout (--drain-timeout 1 s) ended "
                                 "before this request ran; it can be sent again"), results
    (answer, answer_error), (_, ended) = got
    assert answer_error is not None and "before this request ran" in answer_error.message(), got
    assert ended is not None and ended.status() == "StatusCode.UNAVAILABLE", got
    assert "the server is shutting down" in ended.message()
    assert took < 3.5, f"shutdown took {took:.1f} s: it waited for the batch to finish"


def write_slow_loading_model(path: Path) -> Path:
    return write_slow_model(path, features=1024, repeats=500)


SLOW_LOAD_CONFIG = """max_batch_size: 64
model_warmup [{ name: "slow" batch_size: 64 count: 20
  inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [1024] zero_data: true } } }]"""


def test_a_load_racing_sigterm_never_serves_and_a_new_one_is_refused(tmp_path: Path):
    """An explicit load under way at SIGTERM finished during the drain and served a version that was then cut,
    and a load sent during --shutdown-delay started one. Both are now refused UNAVAILABLE, at once."""
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model),
                                             "slowload": ModelSpec(write_slow_loading_model, config=SLOW_LOAD_CONFIG)})
    server = ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "dense",
                           "--shutdown-delay", "1").start()
    client = tc.InferenceServerClient(server.grpc_address)
    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            client.load_model("slowload")
            outcome["load"] = "loaded"
        except Exception as exc:
            outcome["load"] = (exc.status(), exc.message())  # type: ignore[attr-defined]
        outcome["at"] = time.monotonic()

    loader = threading.Thread(target=load)
    try:
        loader.start()
        assert wait_until(lambda: any(m.name == "slowload" and m.state == "LOADING"
                                      for m in client.get_model_repository_index().models)), server.log
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        loader.join(20)
        try:  # still within --shutdown-delay: the server answers, and refuses a new load
            client.load_model("dense")
            refused: object = "loaded"
        except Exception as exc:
            refused = (exc.status(), exc.message())  # type: ignore[attr-defined]
        assert server.proc.wait(20) == 0, server.log
        exited = time.monotonic()
    finally:
        client.close()
        server.stop()
    assert isinstance(outcome["load"], tuple) and outcome["load"][0] == "StatusCode.UNAVAILABLE", outcome
    assert str(outcome["load"][1]).startswith(
        "the server is shutting down: model 'slowload' version 1 was still loading"), outcome
    assert outcome["at"] - signalled < 1.0, "the load was waited for"  # type: ignore[operator]
    assert refused == ("StatusCode.UNAVAILABLE", "the server is shutting down: model 'dense' is not loaded "
                       "(loads are refused from the start of shutdown)"), refused
    assert exited - signalled < 6, "the exit waited for the load (about 10 s of warm-up runs)"


async def test_the_rest_listener_stops_within_its_shutdown_timeout_though_a_handler_ignores_cancellation():
    """aiohttp waits its shutdown timeout for handlers, then as long again for one it cancelled: a handler that
    does not end when cancelled held the REST listener, and so the shutdown, for twice --drain-timeout."""
    loop = asyncio.get_running_loop()

    async def stubborn(request: web.Request) -> web.Response:
        until = loop.time() + 2.5
        while loop.time() < until:
            try:
                await asyncio.sleep(until - loop.time())
            except asyncio.CancelledError:
                pass  # ignores it, as a handler stuck in a shielded wait would
        return web.Response(text="late")

    app = web.Application()
    app.add_routes([web.get("/stubborn", stubborn)])
    listener = HttpListener(app, "127.0.0.1", 0, shutdown_timeout_s=1.0)
    port = await listener.start()
    async with aiohttp.ClientSession() as session:
        call = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/stubborn"))
        await asyncio.sleep(0.2)
        started = loop.time()
        await listener.stop()
        took = loop.time() - started
        done, _ = await asyncio.wait({call}, timeout=1)
        assert done and isinstance(call.exception(), aiohttp.ClientError), "the connection was left open"
    assert 1.0 <= took < 1.5, f"stop took {took:.2f} s for a 1 s shutdown timeout"




def test_the_drain_timeout_also_answers_the_requests_of_a_version_being_unloaded(tmp_path: Path):
    """A version being retired (an unload, or a reload swapping it out) drains its queue outside the versions
    that serve: the drain timeout's cut missed it, so its callers got a bare CANCELLED or a closed connection and
    the exit waited for its batches. Now they get the same answers as a serving version's, and the exit does not
    wait for the run."""
    repo = write_model_repository(tmp_path, {"slow": ModelSpec(
        partial(write_slow_model, features=1024, repeats=500),
        config="max_batch_size: 1024\ndynamic_batching { max_queue_delay_microseconds: 1000 }")})
    server = ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "slow",
                           "--drain-timeout", "1").start()
    client = tc.InferenceServerClient(server.grpc_address)
    control = tc.InferenceServerClient(server.grpc_address)
    results: dict[str, object] = {}

    def running() -> None:
        try:
            # About 6 s, past the shutdown's bound: a run not cut holds the exit.
            results["running"] = client.infer("slow", slow_input(2 * ROWS_RUNNING)).as_numpy("OUTPUT0").shape
        except Exception as exc:
            results["running"] = (exc.status(), exc.message())  # type: ignore[attr-defined]

    def unload() -> None:
        try:
            control.unload_model("slow")
            results["unload"] = "unloaded"
        except Exception as exc:
            results["unload"] = (exc.status(), exc.message())  # type: ignore[attr-defined]

    inflight = ("fleetserve_inflight_requests", frozenset({("model", "slow"), ("version", "1")}))
    depth = ("fleetserve_queue_depth", frozenset({("model", "slow"), ("version", "1")}))
    callers = [threading.Thread(target=running), threading.Thread(target=post_queued, args=(server, results)),
               threading.Thread(target=unload)]
    try:
        callers[0].start()
        assert wait_until(lambda: scrape_metrics(server.metrics_url).get(inflight, 0) >= 1), server.log
        callers[1].start()
        assert wait_until(lambda: scrape_metrics(server.metrics_url).get(depth) == 1), server.log
        callers[2].start()
        assert wait_until(lambda: any(m.name == "slow" and m.state == "UNLOADING"
                                      for m in control.get_model_repository_index().models)), server.log
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(20)
        assert server.proc.wait(20) == 0, server.log
        took = time.monotonic() - signalled
    finally:
        control.close()
        client.close()
        server.stop()
    assert results["running"] == ("StatusCode.UNAVAILABLE", "the server is shutting down: its drain timeout "
                                  "(--drain-timeout 1 s) ended while this request's batch was running; its result "
                                  "is lost"), results
    assert results["queued"] == (503, "the server is shutting down: its drain timeout (--drain-timeout 1 s) ended "
                                 "before this request ran; it can be sent again"), results
    assert results["unload"] == "unloaded", results  # its close ended with the cut, within the transports' grace
    assert took < 3.5, f"shutdown took {took:.1f} s: it waited for the retiring version's batch to finish"

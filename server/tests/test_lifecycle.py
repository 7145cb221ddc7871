"""Model control modes, hot swaps under load, and clean shutdown, against real server processes."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th

from model_store.testing import (
    ModelSpec,
    write_add_constant_model,
    write_config,
    write_dense_model,
    write_model_repository,
    write_slow_model,
)
from server.testing import ServerProcess, scrape_metrics, wait_until


def add_input(value: float, features: int = 16) -> list[tc.InferInput]:
    inp = tc.InferInput("INPUT0", [1, features], "FP32")
    inp.set_data_from_numpy(np.full((1, features), value, np.float32))
    return [inp]


def index(client: tc.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


def test_explicit_mode_load_and_unload(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model), "add_one": ModelSpec(write_add_constant_model)})
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "dense") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        assert client.is_model_ready("dense") and not client.is_model_ready("add_one")
        assert index(client)[("add_one", "")][0] == "UNAVAILABLE"
        client.load_model("add_one")
        assert client.is_model_ready("add_one")
        assert index(client)[("add_one", "1")] == ("READY", "")
        out = client.infer("add_one", add_input(1.0)).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, np.full((1, 16), 2.0, np.float32))
        client.unload_model("dense")
        assert not client.is_model_ready("dense")
        with pytest.raises(tc.InferenceServerException) as err:
            client.infer("dense", add_input(0.0))
        assert err.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("missing")
        assert err.value.status() == "StatusCode.NOT_FOUND" and "missing" in err.value.message()
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("../etc")
        assert err.value.status() == "StatusCode.NOT_FOUND"
        client.close()


def test_explicit_loads_of_names_no_folder_can_have_are_not_found_and_leave_nothing_behind(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})
    long_name, forged = "m" * 256, "dense\n2030-01-01 00:00:00,000 ERROR fleetserve: forged"
    with ServerProcess(repo, "--model-control-mode", "explicit") as server:
        grpc_client = tc.InferenceServerClient(server.grpc_address)
        http_client = th.InferenceServerClient(server.http_address)
        for client, not_found in ((grpc_client, "StatusCode.NOT_FOUND"), (http_client, "404")):
            for name, why in ((long_name, "is 256 bytes long"), (forged, "contains a control character")):
                with pytest.raises(Exception) as err:  # was: INTERNAL / 500 (File name too long)
                    client.load_model(name)
                assert err.value.status() == not_found, err.value
                assert f"model name {name!r} is not valid: it {why}" in err.value.message()
        with pytest.raises(tc.InferenceServerException) as err:  # was UNAVAILABLE: the failed load left an entry
            grpc_client.get_model_metadata(long_name)
        assert err.value.status() == "StatusCode.NOT_FOUND" and "unknown model" in err.value.message()
        assert "Traceback" not in server.log and "\n2030-01-01" not in server.log  # no line a caller wrote
        grpc_client.close()
        http_client.close()


def test_a_model_folder_whose_name_is_not_utf8_is_left_out_of_the_index_and_metrics(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})
    write_dense_model(repo / os.fsdecode(b"bad\xffname") / "1")  # no gRPC or JSON string can name it
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        assert index(client) == {("dense", "1"): ("READY", "")}  # was: INTERNAL, for every caller
        assert scrape_metrics(server.metrics_url)  # was: 500, Prometheus saw nothing
        client.close()


SLOW_WARMUP_CONFIG = """max_batch_size: 8
model_warmup [ { name: "zeros" batch_size: 8 count: 30
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 1024 ] zero_data: true } } } ]
"""


def test_an_explicit_load_whose_client_gives_up_still_serves(tmp_path: Path):
    """A client's deadline shorter than the load (a long warm-up) cancelled the load's RPC task: what it built was
    released and the version stayed LOADING until the next load. As in Triton, the load completes."""
    repo = write_model_repository(tmp_path, {"slow": ModelSpec(
        partial(write_slow_model, features=1024, repeats=100), config=SLOW_WARMUP_CONFIG)})
    with ServerProcess(repo, "--model-control-mode", "explicit") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("slow", client_timeout=0.3)
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert wait_until(lambda: client.is_model_ready("slow"), timeout_s=60), index(client)
        assert index(client)[("slow", "1")] == ("READY", "")
        client.close()


def test_explicit_load_of_a_broken_model_reports_why(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"broken": ModelSpec(lambda p: (p / "model.onnx").write_bytes(b"junk"))})
    with ServerProcess(repo, "--model-control-mode", "explicit") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("broken")
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert "model.onnx" in err.value.message()
        state, reason = index(client)[("broken", "1")]
        assert state == "UNAVAILABLE" and "model.onnx" in reason
        client.close()


def test_an_explicit_reload_that_fails_is_an_error_and_the_loaded_copy_serves_on(tmp_path: Path):
    """As Triton: the answer to a load says whether it worked, and a failed reload leaves the loaded model serving."""
    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model)})
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "add") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        http_client = th.InferenceServerClient(server.http_address)
        (repo / "add" / "1" / "model.onnx").write_bytes(b"truncated upload")
        for loader, invalid in ((client, "StatusCode.INVALID_ARGUMENT"), (http_client, "400")):
            with pytest.raises(Exception) as err:
                loader.load_model("add")
            assert err.value.status() == invalid, err.value
            assert err.value.message().startswith(
                "model 'add' did not load as the repository has it: version 1: serving the copy loaded earlier; "
                "reloading it failed: "), err.value.message()
            assert client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")[0, 0] == 2.0
        assert server.log.count("model 'add' version 1 failed to load") == 2  # each load tried the file again
        write_add_constant_model(repo / "add" / "1", constant=1.0)
        (repo / "add" / "2").mkdir()
        (repo / "add" / "2" / "model.onnx").write_bytes(b"truncated upload")  # a new version that fails
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("add")
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "version 2 UNAVAILABLE: " in err.value.message() and err.value.message().endswith("; serving version 1")
        assert client.infer("add", add_input(1.0)).get_response().model_version == "1"
        write_add_constant_model(repo / "add" / "2", constant=2.0)
        client.load_model("add")  # everything loads: no error
        assert client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")[0, 0] == 3.0
        client.close()
        http_client.close()


def test_version_policies_choose_the_versions_served_and_a_request_for_another_says_why(tmp_path: Path):
    """Triton's version_policy: which versions serve, what metadata lists, what a request for a version left out
    gets (NOT_FOUND, with the policy that left it out); folders that are not version numbers are ignored."""
    policies = {
        "latest": "latest: { num_versions: 2 }",
        "all": "all { }",
        "specific": "specific: { versions: [ 1, 3 ] }",
    }
    repo = write_model_repository(tmp_path, {
        name: ModelSpec(write_add_constant_model, versions=(1, 2, 3), config=f"version_policy: {{ {policy} }}")
        for name, policy in policies.items()
    })
    for name in policies:
        for folder in ("04", "v5", "5x"):  # not version numbers: ignored, as Triton ignores them
            write_add_constant_model(repo / name / folder)
    served = {"latest": ["2", "3"], "all": ["1", "2", "3"], "specific": ["1", "3"]}
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        assert index(client) == {(name, v): ("READY", "") for name, versions in served.items() for v in versions}
        for name, versions in served.items():
            assert client.get_model_metadata(name).versions == versions
            assert client.infer(name, add_input(1.0)).get_response().model_version == "3"
            for version in versions:
                assert client.get_model_metadata(name, version).versions == [version]  # as Triton: the one asked for
                assert client.infer(name, add_input(1.0), model_version=version).get_response().model_version == version
        left_out = (("latest", "1", "latest { num_versions: 2 }; versions: 2, 3"),
                    ("specific", "2", "specific { versions: [1, 3] }; versions: 1, 3"))
        for name, version, why in left_out:
            with pytest.raises(tc.InferenceServerException) as err:
                client.infer(name, add_input(1.0), model_version=version)
            assert err.value.status() == "StatusCode.NOT_FOUND"
            assert err.value.message() == (
                f"model '{name}' version {version} is in the repository but not served: its version_policy is {why}")
        for name in served:
            with pytest.raises(tc.InferenceServerException) as err:
                client.infer(name, add_input(1.0), model_version="5")
            assert err.value.status() == "StatusCode.NOT_FOUND"
            assert f"model '{name}' has no version 5" in err.value.message()
        client.close()


def test_models_with_no_version_to_serve_are_listed_with_the_reason(tmp_path: Path):
    repo = write_model_repository(tmp_path, {
        "add": ModelSpec(write_add_constant_model),
        "pinned": ModelSpec(write_add_constant_model, config="version_policy: { specific: { versions: [ 3 ] } }"),
    })
    (repo / "empty").mkdir()
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        entries = index(client)
        state, reason = entries[("empty", "")]
        assert state == "UNAVAILABLE" and "has no version folders" in reason, entries
        state, reason = entries[("pinned", "")]
        assert state == "UNAVAILABLE" and "selects versions [3], but the repository has versions [1]" in reason
        with pytest.raises(tc.InferenceServerException) as err:
            client.infer("pinned", add_input(1.0))
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "selects versions [3]" in err.value.message()
        samples = scrape_metrics(server.metrics_url)
        assert samples[("fleetserve_models", frozenset({("state", "UNAVAILABLE")}))] == 2
        assert "model 'empty' cannot load" in server.log
        assert client.is_model_ready("add")
        client.close()


def test_a_broken_config_of_a_serving_model_is_reported_once_and_the_old_copy_serves(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model)})
    with ServerProcess(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        failures = ("fleetserve_model_load_failures_total", frozenset({("model", "add")}))
        write_config(repo / "add", "max_batch_size: 4 {")  # a syntax error: the config cannot be read at all
        assert wait_until(lambda: "config.pbtxt" in index(client)[("add", "1")][1]), server.log
        time.sleep(1.0)  # several polls: the same broken file is not tried again
        state, reason = index(client)[("add", "1")]
        assert state == "READY" and reason.startswith("serving the copy loaded earlier") and "1:19" in reason
        assert server.log.count("model 'add' cannot load") == 1, server.log
        assert scrape_metrics(server.metrics_url)[failures] == 1
        assert client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")[0, 0] == 2.0
        write_config(repo / "add", "max_batch_size: -1")  # readable, but wrong: version 1's reload fails
        assert wait_until(lambda: "reloading it failed" in index(client)[("add", "1")][1]), server.log
        assert "max_batch_size" in index(client)[("add", "1")][1]
        assert client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")[0, 0] == 2.0
        (repo / "add" / "config.pbtxt").unlink()  # fixed: the reason goes
        assert wait_until(lambda: index(client)[("add", "1")] == ("READY", "")), server.log
        assert scrape_metrics(server.metrics_url)[failures] == 2
        client.close()


def test_a_deleted_model_file_is_reported_once_and_the_loaded_copy_serves(tmp_path: Path):
    """As Triton: a reload that fails leaves the loaded model serving. The version folder stays, its model.onnx
    goes: the index says why the copy is old, the log says it once (not at every poll), and a new file reloads."""
    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model)})
    with ServerProcess(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        failures = ("fleetserve_model_load_failures_total", frozenset({("model", "add")}))
        (repo / "add" / "1" / "model.onnx").unlink()
        assert wait_until(lambda: "reloading it failed" in index(client)[("add", "1")][1]), server.log
        time.sleep(1.0)  # several polls: the missing file is reported once
        state, reason = index(client)[("add", "1")]
        assert state == "READY" and reason.startswith("serving the copy loaded earlier"), reason
        assert "version 1 has no model file" in reason and "model.onnx is missing" in reason, reason
        assert server.log.count("model 'add' version 1 failed to load: version 1 has no model file") == 1, server.log
        assert scrape_metrics(server.metrics_url)[failures] == 1
        assert client.is_model_ready("add", "1")
        assert client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")[0, 0] == 2.0
        write_add_constant_model(repo / "add" / "1" / "model.onnx", constant=2.0)  # a new file: reloaded
        assert wait_until(lambda: index(client)[("add", "1")] == ("READY", "")), server.log
        assert client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")[0, 0] == 3.0
        client.close()


def test_a_load_sent_while_the_model_unloads_loads_it_again(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"slow": ModelSpec(partial(write_slow_model, features=1024, repeats=500))})
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "slow") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        inflight = ("fleetserve_inflight_requests", frozenset({("model", "slow"), ("version", "1")}))
        results: dict[str, object] = {}

        def infer() -> None:
            inp = tc.InferInput("INPUT0", [64, 1024], "FP32")
            inp.set_data_from_numpy(np.ones((64, 1024), np.float32))
            results["infer"] = client.infer("slow", [inp]).as_numpy("OUTPUT0").shape

        def unload() -> None:
            client.unload_model("slow")
            results["unload"] = "ok"

        caller = threading.Thread(target=infer)
        caller.start()
        assert wait_until(lambda: scrape_metrics(server.metrics_url).get(inflight, 0) >= 1), server.log
        unloader = threading.Thread(target=unload)
        unloader.start()  # drains the running request first
        assert wait_until(lambda: index(client).get(("slow", "1"), ("", ""))[0] == "UNLOADING", 10), server.log
        client.load_model("slow")  # waits for the unload, then loads
        caller.join(30)
        unloader.join(30)
        assert results == {"infer": (64, 1024), "unload": "ok"}
        assert client.is_model_ready("slow"), index(client)
        assert index(client)[("slow", "1")] == ("READY", "")
        client.close()


class Load:
    """Requests in a loop on a background thread; records every failure."""

    def __init__(self, address: str, model: str) -> None:
        self.client = tc.InferenceServerClient(address)
        self.model = model
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.client.infer(self.model, add_input(1.0))
                self.versions.add(result.get_response().model_version)
                self.count += 1
            except Exception as exc:  # every failure is a test failure; keep them for the message
                self.failures.append(str(exc))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def test_poll_mode_swaps_versions_under_load_without_failures(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"add": ModelSpec(partial(write_add_constant_model, constant=1.0))})
    with ServerProcess(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        with Load(server.grpc_address, "add") as load:
            assert wait_until(lambda: load.count > 20)
            # a new version appears: it is loaded, then traffic moves to it
            write_add_constant_model(repo / "add" / "2", constant=2.0)
            assert wait_until(lambda: "2" in load.versions), server.log
            out = client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(out, np.full((1, 16), 3.0, np.float32))
            # the model file of the served version changes: it is reloaded in place
            write_add_constant_model(repo / "add" / "2" / "model.onnx", constant=5.0)
            assert wait_until(lambda: client.infer("add", add_input(1.0)).as_numpy("OUTPUT0")[0, 0] == 6.0), server.log
            before = load.count
            assert wait_until(lambda: load.count > before + 20)
        assert load.failures == []
        assert ("add", "1") not in index(client)  # latest(1): version 1 was retired
        # a model removed from the repository is unloaded
        shutil.rmtree(repo / "add")
        assert wait_until(lambda: not client.is_model_ready("add"))
        # a new model appears
        write_dense_model(repo / "dense" / "1")
        assert wait_until(lambda: client.is_model_ready("dense"))
        client.close()


def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"slow": ModelSpec(
        partial(write_add_constant_model, features=4),
        config="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000000 }")})
    server = ServerProcess(repo).start()
    client = tc.InferenceServerClient(server.grpc_address)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(client.infer("slow", add_input(1.0, features=4)).as_numpy("OUTPUT0"))
        except Exception as exc:
            results.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the request now waits in the queue for its (1 s) batching delay
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    caller.join(20)
    assert server.proc.wait(20) == 0, server.log
    server.stop()
    assert len(results) == 1 and isinstance(results[0], np.ndarray), results
    np.testing.assert_array_equal(results[0], np.full((1, 4), 2.0, np.float32))
    assert "fleetserve stopped" in server.log
    client.close()


def test_sigterm_ends_open_streams_once_they_have_answered_what_they_read(tmp_path: Path):
    """A stream the client keeps open would hold the shutdown for the whole drain timeout and then be cut,
    answered or not: it stops reading, sends its responses, and ends UNAVAILABLE, saying why, well before."""
    repo = write_model_repository(tmp_path, {"slow": ModelSpec(
        partial(write_add_constant_model, features=4),
        config="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000000 }")})
    server = ServerProcess(repo, "--drain-timeout", "20").start()
    client = tc.InferenceServerClient(server.grpc_address)
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        for i in range(2):
            client.async_stream_infer("slow", add_input(float(i), features=4), request_id=str(i))
        time.sleep(0.3)  # both wait in the queue for their (1 s) batching delay; the client never stops writing
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        got = [replies.get(timeout=15) for _ in range(3)]
        assert server.proc.wait(15) == 0, server.log
        assert time.monotonic() - signalled < 10  # not the 20 s drain timeout
    finally:
        client.stop_stream()
        client.close()
        server.stop()
    answered = {result.get_response().id: result.as_numpy("OUTPUT0") for result, error in got[:2] if error is None}
    assert sorted(answered) == ["0", "1"], got
    np.testing.assert_array_equal(answered["1"], np.full((1, 4), 2.0, np.float32))
    _, ended = got[2]
    assert ended is not None and ended.status() == "StatusCode.UNAVAILABLE", got
    assert "the server is shutting down" in ended.message()


def test_sigterm_answers_queued_requests_at_once_though_the_drain_timeout_is_shorter_than_the_queue_delay(
        tmp_path: Path):
    """Requests waiting in a batcher for a 10 s queue delay (or a preferred size nobody will fill) at SIGTERM were
    cancelled when --drain-timeout (1 s) ran out before the delay did. Draining starts by dispatching what is queued,
    so unary gRPC, HTTP and stream requests are all answered, in well under the delay."""
    repo = write_model_repository(tmp_path, {"held": ModelSpec(
        partial(write_add_constant_model, features=4),
        config="max_batch_size: 32\n"
               "dynamic_batching { max_queue_delay_microseconds: 10000000 preferred_batch_size: [ 16 ] }")})
    server = ServerProcess(repo, "--drain-timeout", "1").start()
    client = tc.InferenceServerClient(server.grpc_address)
    stream_client = tc.InferenceServerClient(server.grpc_address)
    replies: queue.Queue = queue.Queue()
    results: dict[str, object] = {}

    def unary(i: int) -> None:
        try:
            results[f"grpc{i}"] = client.infer("held", add_input(float(i), features=4)).as_numpy("OUTPUT0")[0, 0]
        except Exception as exc:
            results[f"grpc{i}"] = exc

    def http(i: int) -> None:
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [float(i)] * 4}]}
        try:
            reply = requests.post(server.http_url + "/v2/models/held/infer", json=body, timeout=30)
            results[f"http{i}"] = reply.json()["outputs"][0]["data"][0] if reply.status_code == 200 else reply.text
        except Exception as exc:
            results[f"http{i}"] = exc

    depth = ("fleetserve_queue_depth", frozenset({("model", "held"), ("version", "1")}))
    callers = [threading.Thread(target=f, args=(i,)) for f in (unary, http) for i in (10, 20)]
    stream_client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        for caller in callers:
            caller.start()
        for i in (30, 40):
            stream_client.async_stream_infer("held", add_input(float(i), features=4), request_id=str(i))
        assert wait_until(lambda: scrape_metrics(server.metrics_url).get(depth) == 6), server.log
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(20)
        assert server.proc.wait(15) == 0, server.log
        took = time.monotonic() - signalled
        got = []
        with contextlib.suppress(queue.Empty):
            while len(got) < 3:  # the two responses and the stream's end
                got.append(replies.get(timeout=5))
    finally:
        stream_client.stop_stream()
        stream_client.close()
        client.close()
        server.stop()
    assert results == {"grpc10": 11.0, "grpc20": 21.0, "http10": 11.0, "http20": 21.0}, results
    answered = {result.get_response().id: result.as_numpy("OUTPUT0")[0, 0] for result, error in got if error is None}
    assert answered == {"30": 31.0, "40": 41.0}, got
    _, ended = got[-1]
    assert ended is not None and "the server is shutting down" in ended.message(), got
    assert took < 5, f"shutdown took {took:.1f} s: it waited out the queue delay"


def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"add": ModelSpec(partial(write_add_constant_model, constant=1.0))})
    with ServerProcess(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2") as server:
        client = tc.InferenceServerClient(server.grpc_address)
        with Load(server.grpc_address, "add") as load:
            (repo / "add" / "2").mkdir()
            (repo / "add" / "2" / "model.onnx").write_bytes(b"truncated upload")
            assert wait_until(lambda: index(client).get(("add", "2"), ("", ""))[0] == "UNAVAILABLE"), server.log
            time.sleep(1.0)  # several polls: the broken version is not retried, version 1 keeps serving
            assert index(client)[("add", "1")] == ("READY", "")
            assert server.log.count("version 2 failed to load") == 1, server.log
            # the upload is fixed: version 2 loads and takes the traffic
            write_add_constant_model(repo / "add" / "2" / "model.onnx", constant=2.0)
            assert wait_until(lambda: "2" in load.versions), server.log
        assert load.failures == []
        assert load.versions == {"1", "2"}
        client.close()


def test_max_connection_age_recycles_connections_without_failing_calls(tmp_path: Path):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    repo = write_model_repository(tmp_path, {"add": ModelSpec(write_add_constant_model)})
    with ServerProcess(repo, "--grpc-max-connection-age", "0.5") as server:
        states: list[grpc.ChannelConnectivity] = []
        channel = grpc.insecure_channel(server.grpc_address)
        channel.subscribe(states.append, try_to_connect=True)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="add")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.zeros((1, 16), np.float32).tobytes())
        deadline = time.monotonic() + 2.5
        calls = 0
        while time.monotonic() < deadline:
            stub.ModelInfer(request, timeout=5)  # raises on any failure
            calls += 1
            time.sleep(0.01)
        channel.close()
        ready_again = [i for i, s in enumerate(states) if s is grpc.ChannelConnectivity.READY]
        assert calls > 50
        assert len(ready_again) >= 2, f"the connection was never recycled: {states}"

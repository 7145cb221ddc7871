"""Triton's trace extension over the wire: tritonclient's get/update_trace_settings on both transports, with
and without a model name, raw REST, and the spans themselves as the proof (the OpenTelemetry SDK's
in-memory exporter of a real server running in a thread of this process, on real ports).

A server without --trace is the session's shared one (server/tests/conftest.py): it is left as found.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from server.app import App
from server.settings import Settings

START = {"trace_file": "", "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
         "log_frequency": "0", "trace_mode": "opentelemetry"}
CLEAR = {"trace_level": None, "trace_rate": None, "trace_count": None}
MODELS = ("a", "b")


class TracedServer:
    """A started App with ``--trace``, its spans kept in ``exporter``, its event loop in a thread of its own so
    that the tests can use tritonclient's blocking clients. Spans are emitted before a response leaves."""

    def __init__(self, repo: Path) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.app = App(Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0,
                                trace=True), tracer_provider=self.provider)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="traced-server", daemon=True)

    def __enter__(self) -> "TracedServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.app.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.provider.shutdown()

    def traced(self, model: str) -> int:
        """Requests of ``model`` traced since the last ``clear``: their root spans."""
        return sum(1 for s in self.exporter.get_finished_spans() if s.name == f"infer {model}")


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedServer]:
    repo = write_model_repository(tmp_path_factory.mktemp("trace-settings-repo"), {
        name: ModelSpec(partial(write_add_constant_model, features=4)) for name in MODELS})
    with TracedServer(repo) as server:
        yield server


@pytest.fixture
def clients(traced: TracedServer) -> Iterator[tuple[tc.InferenceServerClient, th.InferenceServerClient]]:
    """Both tritonclients of the traced server; each test leaves its trace settings at start-up."""
    g = tc.InferenceServerClient(f"127.0.0.1:{traced.app.grpc_port}")
    h = th.InferenceServerClient(f"127.0.0.1:{traced.app.http_port}")
    traced.exporter.clear()
    yield g, h
    for model in MODELS:
        h.update_trace_settings(model_name=model, settings=CLEAR)
    assert h.update_trace_settings(settings=CLEAR) == START
    assert all(h.get_trace_settings(model_name=model) == START for model in MODELS)
    g.close()
    h.close()


def grpc_settings(reply) -> dict[str, list[str]]:
    return {name: list(value.value) for name, value in reply.settings.items()}


def as_lists(settings: dict) -> dict[str, list[str]]:
    return {name: value if isinstance(value, list) else [value] for name, value in settings.items()}


def infer(clients, model: str, n: int) -> None:
    """``n`` requests of ``model``, alternating gRPC and HTTP."""
    g, h = clients
    for i in range(n):
        mod = tc if i % 2 == 0 else th
        x = mod.InferInput("INPUT0", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        result = (g if i % 2 == 0 else h).infer(model, [x])
        assert result.as_numpy("OUTPUT0").tolist() == [[2.0] * 4]


def test_get_reports_the_start_up_settings_on_both_transports_and_the_extension_is_listed(clients, traced):
    g, h = clients
    assert h.get_trace_settings() == START and h.get_trace_settings(model_name="a") == START
    assert grpc_settings(g.get_trace_settings()) == as_lists(START)
    assert grpc_settings(g.get_trace_settings(model_name="a")) == as_lists(START)
    assert "trace" in h.get_server_metadata()["extensions"]
    assert "trace" in g.get_server_metadata().extensions
    infer(clients, "a", 2)  # start-up: every request, as --trace has always traced
    assert traced.traced("a") == 2


def test_rate_2_traces_every_other_request_and_each_transport_reads_the_others_change(clients, traced):
    g, h = clients
    reply = g.update_trace_settings(settings={"trace_rate": "2"})
    assert grpc_settings(reply) == as_lists({**START, "trace_rate": "2"})
    assert h.get_trace_settings() == {**START, "trace_rate": "2"}
    infer(clients, "a", 6)
    assert traced.traced("a") == 3
    assert h.update_trace_settings(settings={"trace_rate": "3"})["trace_rate"] == "3"
    assert grpc_settings(g.get_trace_settings())["trace_rate"] == ["3"]
    traced.exporter.clear()
    infer(clients, "b", 6)
    assert traced.traced("b") == 2


def test_count_takes_that_many_traces_then_tracing_stops(clients, traced):
    g, h = clients
    assert h.update_trace_settings(settings={"trace_count": "3"})["trace_count"] == "3"
    infer(clients, "a", 7)
    assert traced.traced("a") == 3
    assert grpc_settings(g.get_trace_settings())["trace_count"] == ["0"]  # what is left
    assert h.get_trace_settings()["trace_level"] == ["TIMESTAMPS"]


def test_level_off_stops_tracing_and_timestamps_starts_it_again(clients, traced):
    g, h = clients
    assert grpc_settings(g.update_trace_settings(settings={"trace_level": ["OFF"]}))["trace_level"] == ["OFF"]
    infer(clients, "a", 4)
    assert traced.traced("a") == 0
    assert h.update_trace_settings(settings={"trace_level": "TIMESTAMPS"})["trace_level"] == ["TIMESTAMPS"]
    infer(clients, "a", 2)
    assert traced.traced("a") == 2


def test_a_models_setting_affects_only_that_model_and_clearing_it_falls_back_to_the_servers(clients, traced):
    g, h = clients
    reply = g.update_trace_settings(model_name="a", settings={"trace_level": ["OFF"]})
    assert grpc_settings(reply) == as_lists({**START, "trace_level": ["OFF"]})
    assert h.get_trace_settings(model_name="a") == {**START, "trace_level": ["OFF"]}
    assert h.get_trace_settings() == START and h.get_trace_settings(model_name="b") == START
    infer(clients, "a", 3)
    infer(clients, "b", 3)
    assert (traced.traced("a"), traced.traced("b")) == (0, 3)
    # A later change of the server's reaches the settings a model does not set itself.
    h.update_trace_settings(settings={"trace_rate": "2"})
    assert h.get_trace_settings(model_name="a") == {**START, "trace_level": ["OFF"], "trace_rate": "2"}
    # tritonclient sends None as a gRPC SettingValue with no value, and as JSON null over REST: both clear.
    reply = g.update_trace_settings(model_name="a", settings={"trace_level": None})
    assert grpc_settings(reply) == as_lists({**START, "trace_rate": "2"})
    h.update_trace_settings(model_name="a", settings={"trace_rate": "1"})
    traced.exporter.clear()
    infer(clients, "a", 2)
    infer(clients, "b", 2)
    assert (traced.traced("a"), traced.traced("b")) == (2, 1)
    assert h.update_trace_settings(model_name="a", settings={"trace_rate": None})["trace_rate"] == "2"


@pytest.mark.parametrize("settings, says", [
    ({"trace_sampling": "2"}, "unknown trace setting 'trace_sampling'"),
    ({"trace_rate": "0"}, "trace_rate must be a whole number from 1 to 4294967295"),
    ({"trace_count": "-5"}, "trace_count must be -1 (no limit) or a whole number"),
    ({"trace_level": ["TENSORS"]}, "trace_level TENSORS is not supported"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "trace_level cannot be both OFF and TIMESTAMPS"),
    ({"trace_file": "/tmp/t.json"}, "trace_file cannot be set (asked: '/tmp/t.json')"),
    ({"log_frequency": "10"}, "log_frequency cannot be set"),
    ({"trace_mode": "triton"}, "trace_mode 'triton' is not available"),
    ({"trace_rate": ["2", "3"]}, "trace setting 'trace_rate' takes one value, got 2"),
])
@pytest.mark.parametrize("model", [None, "a"])
def test_refusals_are_invalid_argument_and_400_and_change_nothing(clients, settings, says, model):
    g, h = clients
    request = {"trace_count": "7", **settings}  # a valid change first: not applied either
    with pytest.raises(tc.InferenceServerException) as err:
        g.update_trace_settings(model_name=model, settings=request)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and says in err.value.message(), err.value.message()
    with pytest.raises(th.InferenceServerException) as err:
        h.update_trace_settings(model_name=model, settings=request)
    assert err.value.status() == "400" and says in err.value.message(), err.value.message()
    assert h.get_trace_settings() == START and h.get_trace_settings(model_name="a") == START


def test_an_unknown_model_is_not_found_on_both_transports(clients):
    g, h = clients
    says = "unknown model 'nope': it is not loaded on this server"
    for call in (partial(g.get_trace_settings, model_name="nope"),
                 partial(g.update_trace_settings, model_name="nope", settings={"trace_rate": "2"})):
        with pytest.raises(tc.InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.NOT_FOUND" and says in err.value.message()
    for call in (partial(h.get_trace_settings, model_name="nope"),
                 partial(h.update_trace_settings, model_name="nope", settings={"trace_rate": "2"})):
        with pytest.raises(th.InferenceServerException) as err:
            call()
        assert err.value.status() == "404" and says in err.value.message()
    assert h.get_trace_settings() == START


def test_raw_rest_takes_strings_or_lists_refuses_other_json_and_answers_every_setting(clients, traced):
    url = f"http://127.0.0.1:{traced.app.http_port}/v2/trace/setting"
    reply = requests.post(url, json={"trace_rate": ["4"], "trace_level": "TIMESTAMPS"}, timeout=10)
    assert reply.status_code == 200 and reply.json() == {**START, "trace_rate": "4"}
    reply = requests.post(url, json={"trace_rate": 4}, timeout=10)
    assert reply.status_code == 400
    assert "trace setting 'trace_rate' must be a string or a list of strings" in reply.json()["error"]
    for body in (b"[1]", b"{not json"):
        assert requests.post(url, data=body, timeout=10).status_code == 400
    reply = requests.post(f"http://127.0.0.1:{traced.app.http_port}/v2/models/b/trace/setting",
                          json={"trace_count": "2"}, timeout=10)
    assert reply.status_code == 200 and reply.json() == {**START, "trace_rate": "4", "trace_count": "2"}
    assert requests.get(url, timeout=10).json() == {**START, "trace_rate": "4"}
    assert requests.post(url, json={"trace_rate": None}, timeout=10).json() == START


def test_a_server_without_trace_reports_off_and_refuses_turning_it_on(server):
    g, h = tc.InferenceServerClient(server.grpc_address), th.InferenceServerClient(server.http_address)
    off = {**START, "trace_level": ["OFF"]}
    try:
        assert h.get_trace_settings() == off and h.get_trace_settings(model_name="add_one") == off
        assert grpc_settings(g.get_trace_settings()) == as_lists(off)
        says = "this server was started without --trace, so it has no trace exporter; restart it with --trace"
        for model in (None, "add_one"):
            with pytest.raises(tc.InferenceServerException) as err:
                g.update_trace_settings(model_name=model, settings={"trace_level": ["TIMESTAMPS"]})
            assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and says in err.value.message()
            with pytest.raises(th.InferenceServerException) as err:
                h.update_trace_settings(model_name=model, settings={"trace_level": "TIMESTAMPS"})
            assert err.value.status() == "400" and says in err.value.message()
        # The rest may still be changed (nothing is traced either way), and cleared again.
        assert h.update_trace_settings(settings={"trace_rate": "10"}) == {**off, "trace_rate": "10"}
        assert grpc_settings(g.update_trace_settings(settings={"trace_rate": None})) == as_lists(off)
        assert h.get_trace_settings() == off
    finally:
        h.update_trace_settings(settings=CLEAR)
        g.close()
        h.close()

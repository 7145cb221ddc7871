"""The trace extension's core (ops/trace_settings.py): settings read and changed, the server's and a model's,
and which requests they sample, checked both through ``sample`` and through the spans a real
``RequestTracer`` emits into the OpenTelemetry SDK's in-memory exporter.

Every ``TraceSettings`` here is the test's own: no test changes any process-wide state.
"""

from __future__ import annotations

import logging
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.errors import Code, InvalidInput, ModelNotFound
from ops.trace_settings import TraceSettings
from ops.tracing import RequestTracer

START = {"trace_file": "", "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
         "log_frequency": "0", "trace_mode": "opentelemetry"}
MODELS = {"a", "b"}


def settings(exporting: bool = True) -> TraceSettings:
    return TraceSettings(exporting=exporting, model_known=MODELS.__contains__)


def sampled(ts: TraceSettings, model: str, n: int) -> list[bool]:
    return [ts.sample(model) for _ in range(n)]


def test_start_up_settings_trace_every_request_with_trace_and_none_without():
    on, off = settings(), settings(exporting=False)
    assert on.read().as_json() == START
    assert on.read("a").as_json() == START  # a model without settings of its own has the server's
    assert off.read().as_json() == {**START, "trace_level": ["OFF"]}
    assert sampled(on, "a", 3) == [True] * 3 and sampled(off, "a", 3) == [False] * 3
    assert on.read().as_lists() == {name: v if isinstance(v, list) else [v] for name, v in START.items()}


@pytest.mark.parametrize("changes, expected", [
    ({"trace_rate": "5"}, {"trace_rate": "5"}),
    ({"trace_rate": ["5"]}, {"trace_rate": "5"}),  # a one-value list, as gRPC sends every value
    ({"trace_count": "10"}, {"trace_count": "10"}),
    ({"trace_count": "0"}, {"trace_count": "0"}),
    ({"trace_level": ["OFF"]}, {"trace_level": ["OFF"]}),
    ({"trace_level": "OFF"}, {"trace_level": ["OFF"]}),
    ({"trace_level": ["TIMESTAMPS", "TIMESTAMPS"]}, {}),
    ({"trace_file": "", "log_frequency": "0", "trace_mode": "opentelemetry"}, {}),  # a GET's answer sent back
    (dict(START), {}),
    ({"trace_rate": "7", "trace_count": "3", "trace_level": ["OFF"]},
     {"trace_rate": "7", "trace_count": "3", "trace_level": ["OFF"]}),
    ({}, {}),
])
def test_changes_to_the_servers_settings(changes, expected):
    ts = settings()
    assert ts.update(changes).as_json() == {**START, **expected}
    assert ts.read().as_json() == {**START, **expected}
    assert ts.read("a").as_json() == {**START, **expected}  # models without their own follow the server's


@pytest.mark.parametrize("clear", [None, "", [], [""]])
def test_clearing_returns_the_servers_settings_to_start_up_and_a_models_to_the_servers(clear):
    ts = settings()
    ts.update({"trace_rate": "3", "trace_count": "9"})
    ts.update({"trace_rate": "12", "trace_level": ["OFF"]}, model="a")
    assert ts.read("a").as_json() == {**START, "trace_rate": "12", "trace_count": "9", "trace_level": ["OFF"]}
    # The server's rate and count cleared: back to start-up; model a keeps its own rate, follows the count.
    assert ts.update({"trace_rate": clear, "trace_count": clear}).as_json() == START
    assert ts.read("a").as_json() == {**START, "trace_rate": "12", "trace_level": ["OFF"]}
    ts.update({"trace_rate": "4"})
    assert ts.update({"trace_rate": clear, "trace_level": clear}, model="a").as_json() == {**START, "trace_rate": "4"}
    assert ts.read("b").as_json() == {**START, "trace_rate": "4"}


def test_a_models_setting_overrides_the_servers_for_that_model_only_and_follows_later_server_changes():
    ts = settings()
    ts.update({"trace_level": ["OFF"]}, model="a")
    assert sampled(ts, "a", 3) == [False] * 3
    assert sampled(ts, "b", 3) == [True] * 3
    assert sampled(ts, "no-such-model", 2) == [True] * 2  # requests of unknown models are the server's
    ts.update({"trace_rate": "2"})  # a does not set its rate: it follows the server's
    assert ts.read("a").as_json()["trace_rate"] == "2"
    ts.update({"trace_level": ["OFF"]})
    ts.update({"trace_level": ["TIMESTAMPS"]}, model="a")
    assert sampled(ts, "a", 4) == [False, True, False, True]
    assert sampled(ts, "b", 4) == [False] * 4


def test_rate_n_traces_every_nth_request_counted_afresh_from_each_change_of_rate():
    ts = settings()
    ts.update({"trace_rate": "3"})
    assert sampled(ts, "a", 7) == [False, False, True, False, False, True, False]
    ts.update({"trace_rate": "2"})
    assert sampled(ts, "a", 4) == [False, True, False, True]
    ts.update({"trace_rate": "2"})  # the same rate again: counting goes on
    assert sampled(ts, "a", 1) == [False]
    ts.update({"trace_rate": "1"})
    assert sampled(ts, "a", 2) == [True, True]


def test_count_takes_that_many_traces_then_stops_reads_what_is_left_and_starts_again_when_set():
    ts = settings()
    ts.update({"trace_count": "2", "trace_rate": "2"})
    assert sampled(ts, "a", 3) == [False, True, False]
    assert ts.read().as_json()["trace_count"] == "1"
    assert sampled(ts, "b", 5) == [True, False, False, False, False]  # b shares the server's budget
    assert ts.read().as_json()["trace_count"] == "0"
    ts.update({"trace_count": "-1", "trace_rate": "1"})
    assert sampled(ts, "a", 3) == [True] * 3 and ts.read().as_json()["trace_count"] == "-1"


def test_a_model_with_its_own_count_and_rate_spends_its_own_budget():
    ts = settings()
    ts.update({"trace_count": "1"}, model="a")
    assert sampled(ts, "a", 3) == [True, False, False]
    assert ts.read("a").as_json()["trace_count"] == "0" and ts.read().as_json()["trace_count"] == "-1"
    assert sampled(ts, "b", 3) == [True] * 3
    ts.update({"trace_count": None}, model="a")  # back to the server's, unlimited
    assert sampled(ts, "a", 2) == [True, True]


@pytest.mark.parametrize("changes, says", [
    ({"trace_sampling": "2"}, "unknown trace setting 'trace_sampling'; the trace settings are trace_file, trace_level"),
    ({"trace_rate": 2}, "trace setting 'trace_rate' must be a string or a list of strings"),
    ({"trace_rate": True}, "got a boolean (true)"),
    ({"trace_level": {"x": 1}}, "got an object"),
    ({"trace_level": ["OFF", 1]}, "a list holding something other than strings"),
    ({"trace_rate": "0"}, "trace_rate must be a whole number from 1 to 4294967295"),
    ({"trace_rate": "4294967296"}, "trace_rate must be a whole number from 1 to 4294967295"),
    ({"trace_rate": "1.5"}, "got '1.5'"),
    ({"trace_rate": " 2"}, "got ' 2'"),
    ({"trace_rate": ["2", "3"]}, "trace setting 'trace_rate' takes one value, got 2"),
    ({"trace_count": "-2"}, "trace_count must be -1 (no limit) or a whole number from 0 to 2147483647"),
    ({"trace_count": "many"}, "got 'many'"),
    ({"trace_level": ["TENSORS"]}, "trace_level TENSORS is not supported: fleetserve records when each phase"),
    ({"trace_level": ["TIMESTAMPS", "TENSORS"]}, "TENSORS is not supported"),
    ({"trace_level": ["timestamps"]}, "trace_level 'timestamps' is not a trace level"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "trace_level cannot be both OFF and TIMESTAMPS"),
    ({"trace_file": "/tmp/trace.json"}, "trace_file cannot be set (asked: '/tmp/trace.json'): fleetserve does not "
                                        "write traces to files"),
    ({"log_frequency": "50"}, "log_frequency cannot be set (asked: '50')"),
    ({"trace_mode": "triton"}, "trace_mode 'triton' is not available: fleetserve traces with OpenTelemetry only"),
])
@pytest.mark.parametrize("model", ["", "a"])
def test_refusals_are_invalid_argument_say_why_and_apply_nothing(changes, says, model, caplog):
    ts = settings()
    with caplog.at_level(logging.WARNING, logger="ops.trace_settings"):
        with pytest.raises(InvalidInput) as err:
            ts.update({"trace_rate": "3", "trace_count": "5", **changes}, model=model)  # valid ones first: not applied
    assert err.value.code is Code.INVALID_ARGUMENT and says in str(err.value), str(err.value)
    assert ts.read().as_json() == START and ts.read("a").as_json() == START
    assert not caplog.records


def test_without_trace_tracing_cannot_be_turned_on_but_other_settings_can_be_changed():
    ts = settings(exporting=False)
    for model in ("", "a"):
        with pytest.raises(InvalidInput, match="this server was started without --trace, so it has no trace "
                                               "exporter; restart it with --trace"):
            ts.update({"trace_level": ["TIMESTAMPS"]}, model=model)
    assert ts.update({"trace_level": ["OFF"], "trace_rate": "10"}).as_json() == {**START, "trace_level": ["OFF"],
                                                                                 "trace_rate": "10"}
    assert ts.update({"trace_level": None}).as_json()["trace_level"] == ["OFF"]  # its start-up value
    assert sampled(ts, "a", 20) == [False] * 20


def test_an_unknown_model_is_not_found_for_reads_and_changes():
    ts = settings()
    for call in (lambda: ts.read("c"), lambda: ts.update({}, model="c"), lambda: ts.update({"trace_rate": "2"}, "c")):
        with pytest.raises(ModelNotFound, match="unknown model 'c': it is not loaded on this server") as err:
            call()
        assert err.value.code is Code.NOT_FOUND
    assert ts.read().as_json() == START


def test_each_change_is_logged_once_saying_what_changed_and_reads_log_nothing(caplog):
    ts = settings()
    with caplog.at_level(logging.WARNING, logger="ops.trace_settings"):
        ts.update({})
        ts.update({"trace_rate": "1", "trace_file": ""})  # what it already is
        ts.update({"trace_rate": "2", "trace_level": ["OFF"]})
        ts.update({"trace_count": "5"}, model="a")
        ts.update({"trace_count": None}, model="a")
    said = [r.getMessage() for r in caplog.records if r.name == "ops.trace_settings"]
    assert said == [
        "trace settings changed over the API: trace_level TIMESTAMPS -> OFF, trace_rate 1 -> 2",
        "trace settings of model 'a' changed over the API: trace_count -1 (the server's) -> 5",
        "trace settings of model 'a' changed over the API: trace_count 5 -> -1 (the server's)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_the_tracer_emits_spans_only_for_the_requests_the_settings_sample():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ts = settings()
    tracer = RequestTracer(provider, ts)

    def run(model: str, n: int) -> int:
        """Requests of ``model`` finished through the tracer; the number of them that left spans."""
        exporter.clear()
        for i in range(n):
            with tracer.begin(None) as trace:
                trace.model, trace.version, trace.request_id = model, "1", f"r{i}"
                trace.enqueued_ns = trace.started_ns = time.perf_counter_ns()
        roots = [s for s in exporter.get_finished_spans() if s.name == f"infer {model}"]
        assert len(exporter.get_finished_spans()) == 5 * len(roots)  # each trace whole: root and 4 phases
        return len(roots)

    assert run("a", 4) == 4  # start-up: every request, as before these settings existed
    ts.update({"trace_rate": "2"})
    assert run("a", 6) == 3
    ts.update({"trace_count": "2"})
    assert run("a", 10) == 2 and ts.read().count == 0
    ts.update({"trace_count": "-1", "trace_rate": "1"})
    ts.update({"trace_level": ["OFF"]}, model="b")
    assert run("b", 3) == 0 and run("a", 3) == 3
    ts.update({"trace_level": ["OFF"]})
    assert run("a", 3) == 0
    provider.shutdown()


def test_a_tracer_without_settings_traces_every_request():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = RequestTracer(provider)
    for _ in range(3):
        with tracer.begin(None) as trace:
            trace.model = "a"
    assert len([s for s in exporter.get_finished_spans() if s.parent is None]) == 3
    assert tracer.settings.read().as_json() == START
    provider.shutdown()

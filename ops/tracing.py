"""OpenTelemetry tracing of inference requests (the optional ``[tracing]`` extra).

Off by default: only the composition root imports this module, and only with
``--trace``; with it off the transports hold ``None`` and pay one ``is None``
test per request. A traced request is one SERVER span, parented to the
caller's W3C ``traceparent``/``tracestate`` when given, with four children laid
end to end: ``receive`` (decode and validate), ``queue`` (waiting for a batch),
``execute`` (the batch's kernel run, until the result is back on the loop) and
``respond`` (encode). The timestamps are plain ``perf_counter_ns`` integers set
along the way; spans are created all at once when the request finishes, so the
batcher and the kernel never touch OpenTelemetry. Spans leave from the SDK's
batch processor thread; ``shutdown_tracer_provider`` bounds the final flush, so
a collector that is down or slow cannot hold up the server's exit.

Which requests are traced (level, rate, count; the server's or a model's) is decided when a request's
spans would be emitted, by its ``TraceSettings`` (ops/trace_settings.py, changed over the API): a request
it does not sample costs one dict lookup and a counter. Caller-chosen attributes (request id, model name)
are cut like the request log's (``ops.logs.capped``). Imports nothing from fleetserve but ``ops.errors``,
``ops.logs`` and ``ops.trace_settings``.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ops.errors import Code, code_of
from ops.logs import capped
from ops.trace_settings import TraceSettings

_PROPAGATOR = TraceContextTextMapPropagator()
# What shutdown gives the spans still queued to leave: a healthy collector takes well under a second, and the
# SDK's own wait (30 s, each OTLP export retrying for up to 10 s) would outlast the pod's termination grace period.
TRACE_FLUSH_TIMEOUT_S = 2.0


def build_tracer_provider(exporter: str, service_version: str = "") -> Any:
    """An SDK provider exporting in batches: OTLP over HTTP (configured by the exporter's own
    OTEL_EXPORTER_OTLP_* variables) or one JSON span per line on stdout."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise RuntimeError("--trace needs the OpenTelemetry SDK: pip install 'fleetserve[tracing]'") from exc
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise RuntimeError(
                "--trace-exporter otlp needs opentelemetry-exporter-otlp-proto-http: pip install 'fleetserve[tracing]'"
            ) from exc
        span_exporter: Any = OTLPSpanExporter()
    elif exporter == "console":
        span_exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    else:
        raise ValueError(f"trace exporter must be otlp or console, got {exporter!r}")
    provider = SdkTracerProvider(resource=Resource.create({"service.name": "fleetserve",
                                                            "service.version": service_version}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def shutdown_tracer_provider(provider: Any, timeout_s: float = TRACE_FLUSH_TIMEOUT_S) -> bool:
    """Export the spans still queued and shut ``provider`` down, waiting at most ``timeout_s``; False when
    that was not enough (a collector down or slow): the rest is dropped when the process exits."""
    worker = threading.Thread(target=provider.shutdown, name="trace-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return not worker.is_alive()


class RequestTracer:
    """Starts a ``RequestTrace`` per inference request and emits the spans of those ``settings`` samples
    (by default every request). Loop-bound like the transports that hold it."""

    def __init__(self, provider: TracerProvider | None = None, settings: TraceSettings | None = None) -> None:
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer("fleetserve")
        self.settings = settings if settings is not None else TraceSettings(exporting=True)
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()

    def begin(self, traceparent: str | None, tracestate: str | None = None) -> "RequestTrace":
        """A request arrived now, with the caller's W3C trace context headers (or none)."""
        return RequestTrace(self, traceparent, tracestate)

    def _emit(self, t: "RequestTrace", code: Code, end_ns: int) -> None:
        if not self.settings.sample(t.model):
            return
        carrier = {"traceparent": t.traceparent} if t.traceparent else {}
        if carrier and t.tracestate:
            carrier["tracestate"] = t.tracestate
        parent = _PROPAGATOR.extract(carrier)
        off = self._epoch_offset_ns
        attributes = {"fleetserve.model": capped(t.model), "fleetserve.version": t.version,
                      "fleetserve.request_id": capped(t.request_id), "fleetserve.outcome": code.name}
        # Span names stay as bounded as the metrics' labels: a request that reached no model version
        # (an unknown model, bytes that are no request) is "infer", its model name an attribute only.
        name = f"infer {t.model}" if t.version else "infer"
        root = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                       attributes=attributes, start_time=t.received_ns + off)
        if code is not Code.OK:
            root.set_status(Status(StatusCode.ERROR, code.name))
        inside = trace.set_span_in_context(root)
        # Phases the request reached, each lasting until the next one began: a request refused while
        # decoding has only receive and respond; one that expired in the queue has no execute.
        reached = [(name, mark) for name, mark in (("receive", t.received_ns), ("queue", t.enqueued_ns),
                                                   ("execute", t.started_ns), ("respond", t.done_ns)) if mark]
        for (name, start), (_, end) in zip(reached, [*reached[1:], ("", end_ns)]):
            self._tracer.start_span(name, context=inside, start_time=start + off).end(end_time=max(start, end) + off)
        root.end(end_time=end_ns + off)


class RequestTrace:
    """Timestamps of one request (``perf_counter_ns``; 0 until reached). A context manager:
    on exit the spans are emitted with the outcome of the exception that left the block, if any."""

    __slots__ = ("_tracer", "traceparent", "tracestate", "model", "version", "request_id", "outcome",
                 "received_ns", "enqueued_ns", "started_ns", "done_ns")

    def __init__(self, tracer: RequestTracer, traceparent: str | None, tracestate: str | None) -> None:
        self._tracer = tracer
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.model = ""
        self.version = ""
        self.request_id = ""
        # Set by the dataplane when it counts a failure: the code the metrics and the request log
        # have (a gRPC call cancelled at its deadline is DEADLINE_EXCEEDED there, not CANCELLED).
        self.outcome: Code | None = None
        self.received_ns = time.perf_counter_ns()
        self.enqueued_ns = 0  # set by the dataplane when the request is handed to the batcher
        self.started_ns = 0  # set by the servable when its batch starts running
        self.done_ns = 0  # set by the transport when the dataplane answered

    def __enter__(self) -> "RequestTrace":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.finish(exc)

    def finish(self, exc: BaseException | None) -> None:
        """The request was answered (``exc``: with that error, else successfully): emit its spans. What
        leaving the ``with`` block does, for a request that is not answered inside one (a stream's)."""
        now = time.perf_counter_ns()
        if not self.done_ns:
            self.done_ns = now
        code = Code.OK if exc is None else self.outcome if self.outcome is not None else code_of(exc)
        self._tracer._emit(self, code, now)


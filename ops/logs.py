"""Log output: plain text (default) or one JSON object per line, and the per-request log.

``configure_logging`` is called once by the CLI. With ``json`` every record
becomes ``{"ts", "level", "logger", "message", ...fields}``; a record's
``extra={"fields": {...}}`` adds structured fields. ``RequestLog`` writes one
such record per inference request (request id, model, version, outcome,
latency); the dataplane holds one only when JSON logs are on, so plain-text
servers pay nothing per request. What callers choose (the request id; the model
name and version of a request that reached no model version) is written through
``capped``, so a client cannot make one log line as long as its request.

Imports nothing from fleetserve but ``ops.errors``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from ops.errors import Code

LOG_FORMATS = ("text", "json")
LOGGED_TEXT_MAX_CHARS = 256  # of a caller's string in a log line or trace attribute
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an exception's traceback goes in ``exc_info`` and a ``stack_info`` stack in
    ``stack_info``, as text. A record whose arguments do not fit its format (a library's logging bug) keeps its
    format and arguments as its message, where logging would print a multi-line error and drop the record."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception as exc:
            message = f"{record.msg!r} % {record.args!r} ({type(exc).__name__}: {exc})"
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Send fleetserve's logs to stdout as ``fmt`` ("text" or "json") from ``level`` up."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings (numpy's on a client's out-of-range value...) as log records


def capped(text: str, limit: int = LOGGED_TEXT_MAX_CHARS) -> str:
    """``text`` as logs and traces write it: unchanged up to ``limit`` characters, else its first
    ``limit`` characters and a marker with its full length. A longer result is always a cut one."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[cut: {len(text)} characters]"


class RequestLog:
    """Writes one INFO record per inference request to the ``fleetserve.request`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("fleetserve.request")

    def record(self, request_id: str, model: str, version: str, code: Code, duration_ns: int) -> None:
        self._log.info(
            "inference %s", code.name,
            extra={"fields": {"request_id": capped(request_id), "model": capped(model), "version": capped(version),
                              "outcome": code.name, "latency_ms": round(duration_ns / 1e6, 3)}},
        )

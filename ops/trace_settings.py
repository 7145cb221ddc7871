"""Triton's trace extension: read and change which requests are traced while the server runs.

The gRPC ``TraceSetting`` RPC and REST ``GET``/``POST /v2[/models/{m}]/trace/setting`` both call
``TraceSettings.update`` (an empty request only reads). The tracer (ops/tracing.py) asks ``sample`` once
per finished request, with its model's name, whether to emit that request's spans; nothing else on the
request path changes, and a server started without ``--trace`` has no tracer to ask.

The settings, each sent and answered as strings (``trace_level`` as a list of them):

- ``trace_level``: ``["TIMESTAMPS"]`` traces (the spans fleetserve records: receive, queue, execute,
  respond), ``["OFF"]`` does not. ``TENSORS`` is refused: tensor contents are never recorded.
- ``trace_rate``: N traces one request in N (the N-th, the 2N-th, ...; counted from the change of rate).
  The start-up value is 1, every request, as ``--trace`` has always traced (Triton's default is 1000).
- ``trace_count``: -1 for no limit, else the traces still to take; each trace taken counts it down and at
  0 tracing stops until it is set again. Read back, it is what is left.
- ``trace_mode``: ``opentelemetry``, the only mode here. ``trace_file`` (``""``) and ``log_frequency``
  (``"0"``) belong to Triton's file mode, which OpenTelemetry export does not use: they read as shown
  and only those values are accepted, so an answer can be sent back as it is.

A model's settings override the server's for its requests only; a setting a model does not set is the
server's, as it is now (a later change of the server's applies to it). Clearing a value (null, ``""`` or
an empty list) returns a model's setting to the server's, and the server's to its start-up value. A
model keeps its own rate counter and trace budget when it sets ``trace_rate`` or ``trace_count``; else
its requests share the server's. Unknown settings and values that cannot be honoured are refused
(``InvalidInput``) before anything is applied; an unknown model is ``ModelNotFound``.

Loop-bound, not thread-safe: both transports and the tracer call it from the server's event loop.
Imports nothing from fleetserve but ``ops.errors`` and ``ops.log_settings``; never server/, grpc, aiohttp or OpenTelemetry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping

from ops.errors import InvalidInput, ModelNotFound
from ops.log_settings import kind_of

log = logging.getLogger(__name__)

SETTING_NAMES = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")
OFF, TIMESTAMPS, TENSORS = "OFF", "TIMESTAMPS", "TENSORS"
MODE = "opentelemetry"
UNLIMITED = -1
RATE_MAX = 2**32 - 1  # Triton's rate is an unsigned 32-bit number, its count a signed one
COUNT_MAX = 2**31 - 1
_CLEAR = object()  # a value that clears its setting
_FIXED = {"trace_file": "", "log_frequency": "0", "trace_mode": MODE}  # the settings that never change here


@dataclass(slots=True)
class _Rate:
    """One in ``every`` requests is traced; ``seen`` counts those since the last one traced."""

    every: int
    seen: int = 0


@dataclass(slots=True)
class _Budget:
    remaining: int  # traces still to take; UNLIMITED for no limit


@dataclass(slots=True)
class _Scope:
    """The settings of the server (all set) or of one model (None: the server's)."""

    on: bool | None = None
    rate: _Rate | None = None
    count: _Budget | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """What ``sample`` follows for a model: its own rate and budget objects or the server's, shared."""

    on: bool
    rate: _Rate
    count: _Budget


@dataclass(frozen=True, slots=True)
class TraceSettingsView:
    """Every setting as it applies (to a model, when one was named)."""

    on: bool
    rate: int
    count: int

    def as_lists(self) -> dict[str, list[str]]:
        """Each setting as a list of strings: gRPC's ``SettingValue.value``."""
        return {"trace_file": [_FIXED["trace_file"]], "trace_level": [_level_name(self.on)],
                "trace_rate": [str(self.rate)], "trace_count": [str(self.count)],
                "log_frequency": [_FIXED["log_frequency"]], "trace_mode": [MODE]}

    def as_json(self) -> dict[str, str | list[str]]:
        """REST's object: ``trace_level`` a list of strings, every other setting a string."""
        return {name: values if name == "trace_level" else values[0] for name, values in self.as_lists().items()}


def _any_model(name: str) -> bool:
    return True


class TraceSettings:
    """The server's trace settings and each model's, shared by both transports and the tracer.

    ``exporting``: whether the server traces at all (started with ``--trace``); without it the level reads
    OFF and cannot be turned on. ``model_known``: whether a model name is one the server knows (a per-model
    request for any other is ``ModelNotFound``)."""

    def __init__(self, *, exporting: bool, model_known: Callable[[str], bool] = _any_model) -> None:
        self.exporting = exporting
        self._model_known = model_known
        self._server_on, self._server_rate, self._server_count = exporting, _Rate(1), _Budget(UNLIMITED)
        self._models: dict[str, _Scope] = {}
        self._default = _Plan(exporting, self._server_rate, self._server_count)
        self._plans: dict[str, _Plan] = {}

    def sample(self, model: str) -> bool:
        """Whether a finished request of ``model`` is traced; counts it towards its rate and, when it is
        traced, takes one from its budget. Called by the tracer once per request, when its spans would leave."""
        plan = self._plans.get(model, self._default)
        if not plan.on:
            return False
        rate = plan.rate
        rate.seen += 1
        if rate.seen < rate.every:
            return False
        rate.seen = 0
        budget = plan.count
        if budget.remaining == 0:
            return False
        if budget.remaining > 0:
            budget.remaining -= 1
        return True

    def read(self, model: str = "") -> TraceSettingsView:
        """The settings as they apply to ``model`` ("": the server's). ``ModelNotFound`` for an unknown model."""
        self._check_model(model)
        plan = self._plans.get(model, self._default) if model else self._default
        return TraceSettingsView(on=plan.on, rate=plan.rate.every, count=plan.count.remaining)

    def update(self, changes: Mapping[str, object], model: str = "") -> TraceSettingsView:
        """Apply ``changes`` (setting name -> a string, a list of strings, or None to clear; empty: none) to
        ``model``'s settings ("": the server's) and return them as they now apply. Raises ``InvalidInput``
        or ``ModelNotFound`` having changed nothing. Logs one WARNING line saying what changed, if anything."""
        self._check_model(model)
        parsed = {name: self._parsed(name, value) for name, value in changes.items()}  # all checked, then applied
        before = self._described(model)
        if model:
            scope = self._models.get(model) or _Scope()
            for name, value in parsed.items():
                _set(scope, name, None if value is _CLEAR else value)
            if scope == _Scope():
                self._models.pop(model, None)
            else:
                self._models[model] = scope
        else:
            server = _Scope(self._server_on, self._server_rate, self._server_count)
            start_up = {"trace_level": self.exporting, "trace_rate": 1, "trace_count": UNLIMITED}
            for name, value in parsed.items():
                _set(server, name, start_up.get(name) if value is _CLEAR else value)
            assert server.on is not None and server.rate is not None and server.count is not None
            self._server_on, self._server_rate, self._server_count = server.on, server.rate, server.count
        self._default = _Plan(self._server_on, self._server_rate, self._server_count)
        self._plans = {name: _Plan(self._server_on if s.on is None else s.on, s.rate or self._server_rate,
                                   s.count or self._server_count) for name, s in self._models.items()}
        after = self._described(model)
        changed = ", ".join(f"{name} {before[name]} -> {after[name]}" for name in before if before[name] != after[name])
        if changed:
            log.warning("trace settings %schanged over the API: %s", f"of model {model!r} " if model else "", changed)
        return self.read(model)

    def _check_model(self, model: str) -> None:
        if model and not self._model_known(model):
            raise ModelNotFound(f"unknown model {model[:256]!r}: it is not loaded on this server, so it has no "
                                "trace settings; name a model the server knows, or none for the server's settings")

    def _described(self, model: str) -> dict[str, str]:
        """The settings that can change, as a change's log line shows them: a model's own, or the server's."""
        if model:
            own = self._models.get(model) or _Scope()
        else:
            own = _Scope(self._server_on, self._server_rate, self._server_count)
        server = {"trace_level": _level_name(self._server_on), "trace_rate": str(self._server_rate.every),
                  "trace_count": str(self._server_count.remaining)}
        mine = {"trace_level": None if own.on is None else _level_name(own.on),
                "trace_rate": None if own.rate is None else str(own.rate.every),
                "trace_count": None if own.count is None else str(own.count.remaining)}
        return {name: mine[name] or f"{server[name]} (the server's)" for name in server}

    def _parsed(self, name: str, value: object) -> object:
        """``value`` checked for ``name``: the level as a bool, rate and count as ints, ``_CLEAR`` to clear;
        the fixed settings' one value is returned as it is (applying it changes nothing)."""
        if name not in SETTING_NAMES:
            raise InvalidInput(f"unknown trace setting {name[:64]!r}; the trace settings are "
                               f"{', '.join(SETTING_NAMES)}")
        values = _strings(name, value)
        if not values:
            return _CLEAR
        if name == "trace_level":
            return self._level(values)
        if len(values) != 1:
            raise InvalidInput(f"trace setting {name!r} takes one value, got {len(values)}")
        text = values[0]
        if name == "trace_rate":
            rate = _whole(text)
            if rate is None or not 1 <= rate <= RATE_MAX:
                raise InvalidInput(f"trace_rate must be a whole number from 1 to {RATE_MAX} (one request in that "
                                   f"many is traced), got {text[:64]!r}")
            return rate
        if name == "trace_count":
            count = _whole(text)
            if count is None or not UNLIMITED <= count <= COUNT_MAX:
                raise InvalidInput(f"trace_count must be -1 (no limit) or a whole number from 0 to {COUNT_MAX} (the "
                                   f"traces still to take), got {text[:64]!r}")
            return count
        if text != _FIXED[name]:
            raise InvalidInput(_FIXED_REFUSALS[name].format(asked=text[:256]))
        return text

    def _level(self, values: list[str]) -> bool:
        for level in values:
            if level == TENSORS:
                raise InvalidInput("trace_level TENSORS is not supported: fleetserve records when each phase of a "
                                   "request (receive, queue, execute, respond) began and ended, never tensor "
                                   "contents; use TIMESTAMPS, or OFF")
            if level not in (OFF, TIMESTAMPS):
                raise InvalidInput(f"trace_level {level[:64]!r} is not a trace level: use TIMESTAMPS (trace) or OFF "
                                   "(do not)")
        if len(set(values)) > 1:
            raise InvalidInput("trace_level cannot be both OFF and TIMESTAMPS: send [\"TIMESTAMPS\"] or [\"OFF\"]")
        on = values[0] == TIMESTAMPS
        if on and not self.exporting:
            raise InvalidInput("tracing cannot be turned on: this server was started without --trace, so it has "
                               "no trace exporter; restart it with --trace to trace requests")
        return on


def _set(scope: _Scope, name: str, value: object) -> None:
    """Set one of ``scope``'s settings (None: the server's). A rate or a budget that changes is a new one: the
    rate counts afresh, the budget starts full; one set to what it was goes on as it was."""
    if name == "trace_level":
        scope.on = None if value is None else bool(value)
    elif name == "trace_rate":
        if value is None:
            scope.rate = None
        elif isinstance(value, int) and (scope.rate is None or scope.rate.every != value):
            scope.rate = _Rate(value)
    elif name == "trace_count":
        if value is None:
            scope.count = None
        elif isinstance(value, int) and (scope.count is None or scope.count.remaining != value):
            scope.count = _Budget(value)


def _level_name(on: bool) -> str:
    return TIMESTAMPS if on else OFF


_FIXED_REFUSALS = {
    "trace_file": "trace_file cannot be set (asked: {asked!r}): fleetserve does not write traces to files, it "
                  "exports them with OpenTelemetry (--trace-exporter otlp or console); trace_file reads \"\"",
    "log_frequency": "log_frequency cannot be set (asked: {asked!r}): it paces writing trace files, which "
                     "fleetserve does not write (it exports traces with OpenTelemetry); log_frequency reads \"0\"",
    "trace_mode": "trace_mode {asked!r} is not available: fleetserve traces with OpenTelemetry only; trace_mode "
                  "reads \"opentelemetry\"",
}


def _strings(name: str, value: object) -> list[str]:
    """``value`` as a list of strings; [] for a value that clears (null, "", an empty list or [""])."""
    if value is None:
        return []
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        values = list(value)
    else:
        raise InvalidInput(f"trace setting {name!r} must be a string or a list of strings (Triton's clients send "
                           f"\"trace_rate\": \"2\"), got {_kind(value)}")
    return [] if values in ([], [""]) else values


def _whole(text: str) -> int | None:
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:  # int() also takes " 1", "1_0" and "１"
        return None
    return int(text)


def _kind(value: object) -> str:
    return "a list holding something other than strings" if isinstance(value, list) else kind_of(value)

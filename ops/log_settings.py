"""Triton's logging extension: read and change the server's log settings while it serves.

The gRPC ``LogSettings`` RPC and REST ``GET``/``POST /v2/logging`` both call ``update_log_settings`` (an
empty request only reads). No state is kept here: the settings are read back from the logging module
itself (the root logger's level, the filter ``LevelMask`` on its handlers, the handlers' formatter),
so they are process-wide, both transports see every change, and what is reported is what is written.

How Triton's settings map onto Python's levels:

- ``log_error``, ``log_warning``, ``log_info`` switch ERROR (and CRITICAL), WARNING and INFO records
  on or off; ``log_verbose_level`` >= 1 switches DEBUG records on, 0 off. Python has one verbose
  level, so any level >= 1 is read back as 1.
- The root logger's level is the lowest level switched on (``--log-level`` sets the same level at
  start-up, so a server started with DEBUG reads as verbose level 1, one started with WARNING as
  ``log_info`` false). A level switched off above it (``log_info`` off while verbose is on, say) is
  dropped by a ``LevelMask`` on the root's handlers, so every combination is honoured exactly.
- ``log_format``: fleetserve writes ``text`` or ``json`` (``--log-format``), chosen at start-up
  because the per-request log exists only with ``json`` (ops/logs.py). The current format's name
  and Triton's ``default`` (the format the server was started with) are accepted and change
  nothing; any other value, Triton's ``ISO8601`` included, is refused.
- ``log_file`` reads as "" (stdout, for the container runtime to collect). Setting another path is
  refused: a client must not make the server write to a path of its choosing.

Unknown settings and values of the wrong type are refused (``InvalidInput``) before anything is
applied: a request is applied whole or not at all. A null value (JSON ``null``, a gRPC
``SettingValue`` with no value) leaves its setting as it is.

Imports nothing from fleetserve but ``ops.errors`` and ``ops.logs``; never server/, grpc or aiohttp.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Mapping

from ops.errors import InvalidInput
from ops.logs import JsonFormatter

log = logging.getLogger(__name__)

SETTING_NAMES = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
UINT32_MAX = 2**32 - 1
DEFAULT_FORMAT = "default"  # Triton's name for the format a server was started with
_SILENT = logging.CRITICAL + 1  # the root's level with every level switched off
# Each switch's band of record levels, from its lowest level (the root's level when it is the lowest on).
_BANDS = (("verbose", logging.DEBUG), ("info", logging.INFO), ("warning", logging.WARNING),
          ("error", logging.ERROR))
_lock = threading.Lock()  # one read-change-write at a time, whichever thread or transport asks


def band_of(levelno: int) -> str:
    """The switch that governs records of ``levelno``: below INFO is verbose, ERROR and above is error."""
    if levelno < logging.INFO:
        return "verbose"
    if levelno < logging.WARNING:
        return "info"
    if levelno < logging.ERROR:
        return "warning"
    return "error"


class LevelMask(logging.Filter):
    """Drops records whose level's switch is in ``off``; put on the root's handlers by ``update_log_settings``
    only when a level between the root's level and ERROR is switched off."""

    def __init__(self, off: frozenset[str]) -> None:
        super().__init__()
        self.off = off

    def filter(self, record: logging.LogRecord) -> bool:
        return band_of(record.levelno) not in self.off


@dataclass(frozen=True, slots=True)
class LogSettings:
    """The server's log settings as Triton names them (``as_dict``)."""

    info: bool
    warning: bool
    error: bool
    verbose_level: int  # 0 or 1
    format: str  # "text" or "json"

    def as_dict(self) -> dict[str, bool | int | str]:
        """Every setting by its protocol name, as GET and every successful POST answer."""
        return {"log_file": "", "log_info": self.info, "log_warning": self.warning, "log_error": self.error,
                "log_verbose_level": self.verbose_level, "log_format": self.format}

    def switched_on(self) -> dict[str, bool]:
        """Each switch's band (``_BANDS``): whether its records are written."""
        return {"verbose": self.verbose_level > 0, "info": self.info, "warning": self.warning, "error": self.error}


def read_log_settings(root: logging.Logger | None = None) -> LogSettings:
    """The settings in force, derived from ``root`` (the root logger unless given)."""
    root = root or logging.getLogger()
    mask = _mask_of(root)
    off = mask.off if mask is not None else frozenset()
    on = {band: root.level <= lowest and band not in off for band, lowest in _BANDS}
    formats = [h.formatter for h in root.handlers if h.formatter is not None]
    fmt = "json" if formats and isinstance(formats[0], JsonFormatter) else "text"
    return LogSettings(info=on["info"], warning=on["warning"], error=on["error"],
                       verbose_level=1 if on["verbose"] else 0, format=fmt)


def update_log_settings(changes: Mapping[str, object], root: logging.Logger | None = None) -> LogSettings:
    """Apply ``changes`` (setting name -> value; empty: none) to ``root`` (the root logger unless given)
    and return every setting as it now stands. Raises ``InvalidInput``, having changed nothing, for an
    unknown setting, a value of the wrong type, or a value this server cannot honour (``changed``).
    Thread-safe; logs one WARNING line saying what changed, if anything did."""
    root = root or logging.getLogger()
    with _lock:
        before = read_log_settings(root)
        after = changed(before, changes)
        if after == before:
            return before
        described = ", ".join(f"{name} {_shown(old)} -> {_shown(new)}"
                              for (name, old), new in zip(before.as_dict().items(), after.as_dict().values())
                              if old != new)
        # Said while whichever configuration shows it is in force: before a change that hides warnings.
        hides_warnings = before.warning and not after.warning
        if hides_warnings:
            log.warning("log settings changed over the API: %s", described)
        _apply(after, root)
        if not hides_warnings:
            log.warning("log settings changed over the API: %s", described)
        return read_log_settings(root)


def changed(current: LogSettings, changes: Mapping[str, object]) -> LogSettings:
    """``current`` with ``changes`` applied; InvalidInput for the first one that cannot be (nothing applied)."""
    settings = current
    for name, value in changes.items():
        if name not in SETTING_NAMES:
            raise InvalidInput(f"unknown log setting {name!r}; the log settings are {', '.join(SETTING_NAMES)}")
        if value is None:
            continue
        if name == "log_file":
            path = _string(name, value)
            if path != "":
                raise InvalidInput(
                    f"log_file cannot be changed over the API (asked: {path!r}): a client must not make the "
                    "server write to a path of its choosing; fleetserve logs to stdout (log_file \"\") for the "
                    "container runtime to collect")
        elif name == "log_format":
            fmt = _string(name, value)
            if fmt not in (DEFAULT_FORMAT, current.format):
                raise InvalidInput(
                    f"log_format {fmt!r} cannot be used: this server writes {current.format!r} logs, chosen at "
                    f"start-up with --log-format (text or json) and fixed while it runs; {DEFAULT_FORMAT!r} or "
                    f"{current.format!r} keep it")
        elif name == "log_verbose_level":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"log setting 'log_verbose_level' must be an unsigned integer (JSON number, "
                                   f"gRPC uint32_param), got {kind_of(value)}")
            if not 0 <= value <= UINT32_MAX:
                raise InvalidInput(f"log setting 'log_verbose_level' must be from 0 to {UINT32_MAX}, got {value}")
            settings = replace(settings, verbose_level=1 if value else 0)
        elif name == "log_info":
            settings = replace(settings, info=_boolean(name, value))
        elif name == "log_warning":
            settings = replace(settings, warning=_boolean(name, value))
        else:
            settings = replace(settings, error=_boolean(name, value))
    return settings


def _apply(settings: LogSettings, root: logging.Logger) -> None:
    on = settings.switched_on()
    threshold = next((lowest for band, lowest in _BANDS if on[band]), _SILENT)
    off = frozenset(band for band, lowest in _BANDS if lowest > threshold and not on[band])
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, LevelMask)]:
            handler.removeFilter(old)
        if off:
            handler.addFilter(LevelMask(off))
    root.setLevel(threshold)


def _mask_of(root: logging.Logger) -> LevelMask | None:
    for handler in root.handlers:
        for f in handler.filters:
            if isinstance(f, LevelMask):
                return f
    return None


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"log setting {name!r} must be a boolean (JSON true or false, gRPC bool_param), "
                           f"got {kind_of(value)}")
    return value


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"log setting {name!r} must be a string (gRPC string_param), got {kind_of(value)}")
    return value


def kind_of(value: object) -> str:
    """What a JSON-like setting value is, for a refusal: "a boolean (true)", "a string ('x')", "a list", ..."""
    if isinstance(value, bool):
        return f"a boolean ({_shown(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:64]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)

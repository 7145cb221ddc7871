"""The logging extension's core (ops/log_settings.py): how Triton's settings map onto Python's levels.

Changes go to a private logger standing in for the root (``update_log_settings``'s ``root``), so no test
touches the process's own logging; the start-up mapping is read in a subprocess configured by the CLI's
own ``configure_logging``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.errors import Code, InvalidInput
from ops.log_settings import LogSettings, changed, read_log_settings, update_log_settings
from ops.logs import JsonFormatter

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@pytest.fixture
def root() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger configured as ``configure_logging`` configures the root (INFO, text), writing to a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test_log_settings.root")
    logger.handlers[:] = [handler]
    logger.propagate, logger.level = False, logging.INFO
    yield logger, out
    logger.handlers.clear()


def written(logger: logging.Logger, out: io.StringIO) -> list[str]:
    """The levels of one record of each level, logged now, that reach the output."""
    start = len(out.getvalue())
    for level in LEVELS + ("CRITICAL",):
        logger.log(logging.getLevelName(level), "probe")
    return [line.split()[0] for line in out.getvalue()[start:].splitlines()]


def test_a_server_reports_the_level_and_format_it_was_started_with():
    """Read back from the real configuration: ``--log-level DEBUG`` is verbose level 1, WARNING has log_info off."""
    script = textwrap.dedent("""
        import json
        from ops.logs import configure_logging
        from ops.log_settings import read_log_settings
        out = {}
        for fmt in ("text", "json"):
            for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
                configure_logging(level, fmt)
                out[f"{level} {fmt}"] = read_log_settings().as_dict()
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    switches = {"DEBUG": (1, True, True, True), "INFO": (0, True, True, True),
                "WARNING": (0, False, True, True), "ERROR": (0, False, False, True)}
    for fmt in ("text", "json"):
        for level, (verbose, info, warning, error) in switches.items():
            assert seen[f"{level} {fmt}"] == {"log_file": "", "log_info": info, "log_warning": warning,
                                              "log_error": error, "log_verbose_level": verbose, "log_format": fmt}


@pytest.mark.parametrize("changes, levels", [
    ({"log_verbose_level": 1}, ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
    ({"log_verbose_level": 7}, ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
    ({"log_info": False}, ["WARNING", "ERROR", "CRITICAL"]),
    ({"log_info": False, "log_warning": False}, ["ERROR", "CRITICAL"]),
    ({"log_info": False, "log_warning": False, "log_error": False}, []),
    # Levels switched off above the lowest one on: dropped by the handlers' filter, each alone.
    ({"log_verbose_level": 1, "log_info": False}, ["DEBUG", "WARNING", "ERROR", "CRITICAL"]),
    ({"log_warning": False}, ["INFO", "ERROR", "CRITICAL"]),
    ({"log_info": False, "log_error": False}, ["WARNING"]),
], ids=["verbose", "verbose-7", "no-info", "errors-only", "silent", "debug-without-info", "no-warning",
        "warnings-only"])
def test_each_switch_turns_its_level_on_or_off_exactly(root, changes, levels):
    logger, out = root
    settings = update_log_settings(changes, logger)
    assert written(logger, out) == levels
    on = set(levels)
    assert settings == read_log_settings(logger) == LogSettings(
        info="INFO" in on, warning="WARNING" in on, error="ERROR" in on, verbose_level=int("DEBUG" in on),
        format="text")
    back = update_log_settings({"log_verbose_level": 0, "log_info": True, "log_warning": True, "log_error": True},
                               logger)
    assert written(logger, out) == ["INFO", "WARNING", "ERROR", "CRITICAL"]
    assert back == LogSettings(info=True, warning=True, error=True, verbose_level=0, format="text")
    assert all(not handler.filters for handler in logger.handlers)  # no filter left once none is needed


def test_an_empty_request_changes_nothing_and_null_leaves_a_setting_as_it_is(root):
    logger, out = root
    before = read_log_settings(logger)
    assert update_log_settings({}, logger) == before
    assert update_log_settings({"log_info": None, "log_file": None, "log_verbose_level": None}, logger) == before
    # What GET answered can be sent back as is (log_file "" and the format by name or as Triton's "default").
    assert update_log_settings(before.as_dict(), logger) == before
    assert update_log_settings({"log_format": "default"}, logger) == before
    assert written(logger, out) == ["INFO", "WARNING", "ERROR", "CRITICAL"]


def test_a_change_is_logged_once_saying_what_changed(root, caplog):
    logger, _ = root
    with caplog.at_level(logging.WARNING, logger="ops.log_settings"):
        update_log_settings({"log_verbose_level": 1, "log_info": True}, logger)
        update_log_settings({"log_verbose_level": 1}, logger)  # no change: no line
    said = [r.getMessage() for r in caplog.records if r.name == "ops.log_settings"]
    assert said == ["log settings changed over the API: log_verbose_level 0 -> 1"]


@pytest.mark.parametrize("changes, says", [
    ({"log_verbose": 1}, "unknown log setting 'log_verbose'; the log settings are log_file, log_info, log_warning, "
                         "log_error, log_verbose_level, log_format"),
    ({"log_warnings": True}, "unknown log setting 'log_warnings'"),
    ({"log_info": "false"}, "log setting 'log_info' must be a boolean (JSON true or false, gRPC bool_param), got a "
                            "string ('false')"),
    ({"log_error": 1}, "log setting 'log_error' must be a boolean"),
    ({"log_verbose_level": "1"}, "log setting 'log_verbose_level' must be an unsigned integer (JSON number, gRPC "
                                 "uint32_param), got a string ('1')"),
    ({"log_verbose_level": True}, "must be an unsigned integer (JSON number, gRPC uint32_param), got a boolean (true)"),
    ({"log_verbose_level": 1.5}, "got a number (1.5)"),
    ({"log_verbose_level": -1}, "log setting 'log_verbose_level' must be from 0 to 4294967295, got -1"),
    ({"log_verbose_level": 2**32}, "must be from 0 to 4294967295, got 4294967296"),
    ({"log_file": "/etc/cron.d/job"}, "log_file cannot be changed over the API (asked: '/etc/cron.d/job'): a client "
                                      "must not make the server write to a path of its choosing"),
    ({"log_file": 3}, "log setting 'log_file' must be a string (gRPC string_param), got a number (3)"),
    ({"log_format": "ISO8601"}, "log_format 'ISO8601' cannot be used: this server writes 'text' logs, chosen at "
                                "start-up with --log-format (text or json) and fixed while it runs"),
    ({"log_format": "json"}, "log_format 'json' cannot be used"),
    ({"log_format": ["text"]}, "log setting 'log_format' must be a string (gRPC string_param), got a list"),
    # Atomic: the valid settings before and after the bad one are not applied either.
    ({"log_verbose_level": 1, "log_info": "yes", "log_error": False}, "log setting 'log_info' must be a boolean"),
    ({"log_info": False, "nope": True}, "unknown log setting 'nope'"),
], ids=lambda v: None)
def test_a_bad_request_is_refused_whole_saying_why(root, changes, says):
    logger, out = root
    before = read_log_settings(logger)
    with pytest.raises(InvalidInput) as err:
        update_log_settings(changes, logger)
    assert err.value.code is Code.INVALID_ARGUMENT
    assert says in err.value.message, err.value.message
    assert read_log_settings(logger) == before
    assert written(logger, out) == ["INFO", "WARNING", "ERROR", "CRITICAL"]


def test_the_format_is_read_from_the_handlers_and_only_kept(root):
    logger, _ = root
    logger.handlers[0].setFormatter(JsonFormatter())
    current = read_log_settings(logger)
    assert current.format == "json"
    assert changed(current, {"log_format": "json"}) == changed(current, {"log_format": "default"}) == current
    with pytest.raises(InvalidInput, match="this server writes 'json' logs"):
        changed(current, {"log_format": "text"})

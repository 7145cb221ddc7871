"""JSON logs: every record one JSON object on one line, whatever it carries, and Python warnings among them."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from ops.logs import JsonFormatter

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # UTC, with its zone


def test_every_record_is_one_json_line_whatever_it_carries():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test_logs.json")
    log.addHandler(handler)
    log.propagate, log.level = False, logging.INFO
    try:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("failed")
        log.warning("where", stack_info=True)
        log.info("count %d", "not a number")  # a logging bug in some library: the record is kept
        log.info("two\nlines, a lone surrogate \udcff and %s", b"\xff\xfe")
        log.info("x" * 1_000_000)
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 5
    assert all(TIMESTAMP.fullmatch(r["ts"]) and r["logger"] == "test_logs.json" for r in records)
    failed, where, bug, odd, huge = records
    assert failed["level"] == "ERROR" and failed["exc_info"].startswith("Traceback (most recent call last):")
    assert failed["exc_info"].endswith("ValueError: bad\nvalue")
    assert where["level"] == "WARNING" and where["stack_info"].startswith("Stack (most recent call last):")
    assert bug["message"] == "'count %d' % ('not a number',) (TypeError: %d format: a real number is required, not str)"
    assert odd["message"] == "two\nlines, a lone surrogate \udcff and b'\\xff\\xfe'"
    assert len(huge["message"]) == 1_000_000


def test_python_warnings_are_json_records_too():
    """numpy warns when a client's value overflows its datatype; with JSON logs that is a record, not stderr text."""
    script = textwrap.dedent("""
        import warnings
        import numpy as np
        from ops.logs import configure_logging

        configure_logging("INFO", "json")
        warnings.warn("a library's warning")
        np.asarray([1e10], dtype=np.float16)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["level"], r["logger"]) for r in records] == [("WARNING", "py.warnings")] * 2
    assert "UserWarning: a library's warning" in records[0]["message"]
    assert "RuntimeWarning: overflow encountered in cast" in records[1]["message"]

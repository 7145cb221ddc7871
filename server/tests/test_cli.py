"""The fleetserve command line: models listing, flag validation."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.testing import ModelSpec, write_dense_model, write_model_repository


LOOPBACK = ("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")


def run(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=timeout_s,
                          cwd=Path(__file__).resolve().parents[2])


def test_models_lists_the_bundled_examples():
    result = run("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "INPUTS"]
    names = {line.split()[0]: line.split()[2] for line in lines[1:]}
    assert names == {"add_one": "READY", "dense": "READY", "mlp": "READY", "pipeline": "READY", "simple": "READY"}


def test_models_reports_a_broken_model_and_exits_nonzero(tmp_path: Path):
    repo = write_model_repository(tmp_path, {
        "good": ModelSpec(write_dense_model),
        "bad": ModelSpec(write_dense_model, config="max_batch_size: -3"),
    })
    result = run("models", "--model-repository", str(repo))
    assert result.returncode == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("bad")]
    assert bad and "UNAVAILABLE" in bad[0] and "max_batch_size" in bad[0]


def test_models_of_a_folder_that_does_not_exist_is_a_usage_error(tmp_path: Path):
    result = run("models", "--model-repository", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"model repository {tmp_path / 'nowhere'} is not a folder" in result.stderr


def test_serve_rejects_bad_flags_with_a_clear_message(tmp_path: Path):
    result = run("serve", "--grpc-port", "70000")
    assert result.returncode == 2 and "grpc-port must be in 0..65535" in result.stderr
    result = run("serve", "--model-repository", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "is not a folder" in result.stderr
    result = run("serve", "--load-model", "x")
    assert result.returncode == 2 and "explicit" in result.stderr
    result = run("serve", "--grpc-max-concurrent-streams", "0")
    assert result.returncode == 2 and "--grpc-max-concurrent-streams must be >= 1, got 0" in result.stderr


def test_a_refused_value_is_reported_by_its_subcommand_with_its_usage(tmp_path: Path):
    """Was the top-level usage and 'fleetserve: error:', which lists subcommands, not the flag refused."""
    result = run("serve", *LOOPBACK, "--drain-timeout", "-1", timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("usage: fleetserve serve "), result.stderr
    assert result.stderr.splitlines()[-1] == (
        "fleetserve serve: error: --drain-timeout must be a finite number of seconds >= 0, got -1.0")
    result = run("models", "--model-repository", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.startswith("usage: fleetserve models "), result.stderr
    assert result.stderr.splitlines()[-1] == f"fleetserve models: error: model repository {tmp_path / 'nowhere'} is not a folder"


@pytest.mark.parametrize("flag, value", [
    ("--drain-timeout", "-1"),  # was accepted
    ("--drain-timeout", "nan"),  # was accepted; the shutdown then crashed with a traceback
    ("--shutdown-delay", "inf"),  # was accepted; SIGTERM then never ended the server
    ("--repository-poll-secs", "nan"),  # was accepted; the poller died at its first sleep
    ("--grpc-max-connection-age", "inf"),  # was accepted; start-up crashed with an OverflowError
    ("--http-body-idle-timeout", "0"),
    ("--http-body-idle-timeout", "inf"),
])
def test_serve_rejects_durations_that_are_negative_or_not_finite(flag: str, value: str):
    result = run("serve", *LOOPBACK, flag, value, timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{flag} must be a finite number of seconds" in result.stderr


@pytest.mark.parametrize("value, message", [
    ("0.5,0.1", "bucket bounds must be strictly increasing, got [0.5, 0.1]"),
    ("0.1,0.1", "bucket bounds must be strictly increasing, got [0.1, 0.1]"),
    ("-1,2", "bucket bounds must be positive and finite, got [-1.0, 2.0]"),
    ("1,inf", "bucket bounds must be positive and finite, got [1.0, inf]"),
    ("nan", "bucket bounds must be positive and finite, got [nan]"),
    ("", "give at least one bucket bound"),
    ("a,b", "expected comma-separated numbers, got 'a,b'"),
    ("1,,2", "expected comma-separated numbers, got '1,,2'"),  # was read as 1,2
])
@pytest.mark.parametrize("flag", ["--metrics-latency-buckets", "--metrics-batch-buckets"])
def test_serve_rejects_histogram_buckets_naming_the_flag(flag: str, value: str, message: str):
    """Was 'fleetserve serve: error: latency buckets: ...' (or 'batch size buckets'), naming no flag."""
    result = run("serve", *LOOPBACK, f"{flag}={value}", timeout_s=60)
    assert result.returncode == 2 and result.stderr.startswith("usage: fleetserve serve "), result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == f"fleetserve serve: error: argument {flag}: {message}"


@pytest.mark.parametrize("listener, flag", [("metrics", "--metrics-port"), ("gRPC", "--grpc-port"),
                                            ("HTTP", "--http-port")])
def test_serve_that_cannot_listen_exits_1_with_one_line_and_no_traceback(listener: str, flag: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", *LOOPBACK, flag, str(port), timeout_s=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"cannot start: cannot listen for {listener} on 127.0.0.1:{port}" in result.stdout.splitlines()[-1], output

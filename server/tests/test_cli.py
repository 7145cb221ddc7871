"""The fleetserve command line: models listing, flag validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from model_store.testing import ModelSpec, write_dense_model, write_model_repository


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])


def test_models_lists_the_bundled_examples():
    result = run("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "INPUTS"]
    names = {line.split()[0]: line.split()[2] for line in lines[1:]}
    assert names == {"add_one": "READY", "dense": "READY", "mlp": "READY", "simple": "READY"}


def test_models_reports_a_broken_model_and_exits_nonzero(tmp_path: Path):
    repo = write_model_repository(tmp_path, {
        "good": ModelSpec(write_dense_model),
        "bad": ModelSpec(write_dense_model, config="max_batch_size: -3"),
    })
    result = run("models", "--model-repository", str(repo))
    assert result.returncode == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("bad")]
    assert bad and "UNAVAILABLE" in bad[0] and "max_batch_size" in bad[0]


def test_serve_rejects_bad_flags_with_a_clear_message(tmp_path: Path):
    result = run("serve", "--grpc-port", "70000")
    assert result.returncode == 2 and "grpc-port must be in 0..65535" in result.stderr
    result = run("serve", "--model-repository", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "is not a folder" in result.stderr
    result = run("serve", "--load-model", "x")
    assert result.returncode == 2 and "explicit" in result.stderr

"""Fixtures of the harness tests: synthetic results, a real fleetserve serving a tiny model, and one serving the
bundled add_one over mutual TLS on both transports."""

from __future__ import annotations

import shutil
from typing import Any, Callable

import pytest

from loadtest import perf_analyzer
from loadtest.results import LoadtestResult, PointResult
from loadtest.stats import LatencyMs
from model_store.examples import REPOSITORY
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from server.testing import ServerProcess
from server.tls_testing import make_pki, tls_args


def _point(**overrides: Any) -> PointResult:
    values: dict[str, Any] = dict(
        mode="concurrency", level=8.0, duration_s=4.0, requests=4000, ok=4000, throughput_rps=1000.0,
        rows_per_s=1000.0, latency_ms=LatencyMs(5.0, 8.0, 12.0, 20.0, 5.5, 25.0), errors={}, error_rate=0.0,
        goodput_rps=990.0, stable=True, window_rps=[990.0, 1000.0, 1010.0], measured_windows=3,
        batch_sizes={1: 100, 4: 900}, mean_batch_size=3.7, loadgen_cpu_cores=0.5, loadgen_busiest_process=0.5,
        send_lag_p99_ms=None,
    )
    values.update(overrides)
    return PointResult(**values)


def _result(points: list[PointResult] | None = None, **overrides: Any) -> LoadtestResult:
    values: dict[str, Any] = dict(
        label="tiny unary", created_utc="2025-01-01T00:00:00+00:00", command=["fleetserve", "loadtest"],
        targets=["127.0.0.1:8001"], model="add_one", model_version="", transport="unary", rows_per_request=1,
        seed=0, slo_ms=10.0, processes=1, streams=1, warmup_s=2.0, window_s=2.0, stable_windows=3, tolerance=0.1,
        max_duration_s=30.0, max_requests=1_000_000, host_cpu_count=2,
        points=points if points is not None else [_point()],
    )
    values.update(overrides)
    return LoadtestResult(**values)


@pytest.fixture
def make_point() -> Callable[..., PointResult]:
    return _point


@pytest.fixture
def make_result() -> Callable[..., LoadtestResult]:
    return _result


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory):
    """fleetserve on 127.0.0.1 serving ``add_one`` (INPUT0 FP32 [-1,16] -> +1), with dynamic batching."""
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {
        "add_one": ModelSpec(write_add_constant_model, config="""
            max_batch_size: 32
            dynamic_batching { max_queue_delay_microseconds: 500 }
        """),
    })
    with ServerProcess(repo) as server:
        yield server


@pytest.fixture(scope="module")
def pa() -> perf_analyzer.PerfAnalyzer:
    """Triton's perf_analyzer, which the test command installs: missing, the test fails (never skips)."""
    found = perf_analyzer.locate()
    if found is None:
        pytest.fail(f"perf_analyzer is not installed; {perf_analyzer.INSTALL_HINT}")
    return found


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    """(server, pki): add_one over mutual TLS on gRPC and REST, certificates of a test CA (server/tls_testing.py)."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    with ServerProcess(root, *tls_args(pki, mutual=True)) as server:
        yield server, pki

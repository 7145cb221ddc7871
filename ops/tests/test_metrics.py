"""ServerMetrics on a fresh registry (exposition, handles, buckets), then the same families from a live server."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ops.errors import Code
from ops.gpu import GpuCollector, gpu_collector
from ops.gpu_testing import FakeGpu, FakeNvml
from model_store.testing import ModelSpec, write_dense_model, write_model_repository
from ops.histograms import MetricsConfig
from ops.metrics import FAMILIES, RETIRED_HANDLES, ServerMetrics
from server.testing import scrape_metrics

README = Path(__file__).resolve().parents[2] / "README.md"


class FakeQueue:
    def __init__(self, depth: int, estimate: object = None) -> None:
        self.queue_depth = depth
        self.estimate = estimate


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def L(**labels: str) -> frozenset:
    return frozenset(labels.items())


def test_handles_record_and_export_standard_families():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, MetricsConfig(latency_buckets_s=(0.001, 0.01), batch_size_buckets=(1, 4),
                                                    process_metrics=False), version="9.9")
    metrics.observe_server(ready=lambda: True, model_states=lambda: ["READY", "READY", "UNAVAILABLE"],
                           state_names=["LOADING", "READY", "UNLOADING", "UNAVAILABLE"])
    h = metrics.servable("m", "1")
    h.attach(FakeQueue(3), 2)
    for ns in (500_000, 5_000_000, 50_000_000):
        h.record_success(ns)
    h.record_failure(Code.RESOURCE_EXHAUSTED)
    h.queue.observe(1_000_000)  # exactly on a bound: counted in le="0.001"
    h.record_batch(3, 1000, 2_000_000, 1000, 3_000_000)
    h.inflight = 5
    metrics.record_unresolved("", Code.NOT_FOUND)
    metrics.record_load(2_000_000_000)
    metrics.record_load_failure("bad")
    got = samples(registry)
    mv = dict(model="m", version="1")
    assert got[("fleetserve_inference_requests_total", L(**mv, code="OK"))] == 3
    assert got[("fleetserve_inference_requests_total", L(**mv, code="RESOURCE_EXHAUSTED"))] == 1
    assert got[("fleetserve_inference_requests_total", L(model="", version="", code="NOT_FOUND"))] == 1
    assert ("fleetserve_inference_requests_total", L(**mv, code="INTERNAL")) not in got  # only codes seen
    assert [got[("fleetserve_request_duration_seconds_bucket", L(**mv, le=le))] for le in ("0.001", "0.01", "+Inf")] \
        == [1, 2, 3]
    assert got[("fleetserve_request_duration_seconds_sum", L(**mv))] == pytest.approx(0.0555)
    assert got[("fleetserve_request_duration_seconds_count", L(**mv))] == 3
    assert got[("fleetserve_queue_duration_seconds_bucket", L(**mv, le="0.001"))] == 1
    assert got[("fleetserve_compute_duration_seconds_sum", L(**mv, phase="infer"))] == pytest.approx(0.002)
    assert got[("fleetserve_batch_size_rows_bucket", L(**mv, le="4.0"))] == 1
    assert got[("fleetserve_batch_size_rows_sum", L(**mv))] == 3
    assert got[("fleetserve_kernel_runs_total", L(**mv))] == 1
    assert got[("fleetserve_kernel_busy_seconds_total", L(**mv))] == pytest.approx(0.003)
    assert got[("fleetserve_kernel_instances", L(**mv))] == 2
    assert got[("fleetserve_queue_depth", L(**mv))] == 3
    assert got[("fleetserve_inflight_requests", L(**mv))] == 5
    assert got[("fleetserve_models", L(state="READY"))] == 2 and got[("fleetserve_models", L(state="LOADING"))] == 0
    assert got[("fleetserve_model_load_duration_seconds_count", L())] == 1
    assert got[("fleetserve_model_load_failures_total", L(model="bad"))] == 1
    assert got[("fleetserve_server_ready", L())] == 1
    assert got[("fleetserve_build_info", L(version="9.9"))] == 1


def test_the_schedulers_estimate_is_exported_per_model_version():
    from batching.config import ScheduleEstimate
    from batching.estimate import RunTimeCurve

    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, MetricsConfig(process_metrics=False))
    slo = ScheduleEstimate(curve=RunTimeCurve(0.002, 0.0001, margin=0.25, samples=40), arrival_rows_per_s=2000.0,
                           target_rows=14, wait_s=0.006, admission_batch_rows=46, budget_s=0.0171,
                           loop_lag_allowance_s=0.0009, admission_tail_scale=0.6, offered_rows_per_s=2500.0)
    metrics.servable("slo", "1").attach(FakeQueue(0, slo), 1)
    fixed = ScheduleEstimate(curve=None, arrival_rows_per_s=0.0, target_rows=0, wait_s=0.0, admission_batch_rows=0,
                             budget_s=None)
    metrics.servable("fixed", "2").attach(FakeQueue(0, fixed), 1)
    got = samples(registry)
    mv = L(model="slo", version="1")
    assert got[("fleetserve_scheduler_run_time_intercept_seconds", mv)] == pytest.approx(0.002)
    assert got[("fleetserve_scheduler_run_time_per_row_seconds", mv)] == pytest.approx(0.0001)
    assert got[("fleetserve_scheduler_run_time_margin_ratio", mv)] == pytest.approx(0.25)
    assert got[("fleetserve_scheduler_arrival_rows_per_second", mv)] == 2000
    assert got[("fleetserve_scheduler_offered_rows_per_second", mv)] == 2500
    assert got[("fleetserve_scheduler_target_batch_rows", mv)] == 14
    assert got[("fleetserve_scheduler_wait_seconds", mv)] == pytest.approx(0.006)
    assert got[("fleetserve_scheduler_admission_batch_rows", mv)] == 46
    assert got[("fleetserve_scheduler_budget_seconds", mv)] == pytest.approx(0.0171)
    assert got[("fleetserve_scheduler_loop_lag_allowance_seconds", mv)] == pytest.approx(0.0009)
    assert got[("fleetserve_scheduler_admission_tail_scale_ratio", mv)] == pytest.approx(0.6)
    other = L(model="fixed", version="2")
    assert got[("fleetserve_scheduler_target_batch_rows", other)] == 0
    assert ("fleetserve_scheduler_budget_seconds", other) not in got  # no objective: no budget
    assert ("fleetserve_scheduler_run_time_per_row_seconds", other) not in got  # no fit yet


def test_a_reloaded_version_shares_its_handle_and_series_leave_with_the_last_copy():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, MetricsConfig(process_metrics=False))
    old = metrics.servable("m", "1")
    old.record_success(1000)
    new = metrics.servable("m", "1")  # the reload, while the old copy drains
    assert new is old
    old.release()
    new.record_success(1000)
    key = ("fleetserve_inference_requests_total", L(model="m", version="1", code="OK"))
    assert samples(registry)[key] == 2  # counters continue across the swap
    new.release()
    assert key not in samples(registry)


def test_a_version_unloaded_and_loaded_again_continues_its_counters():
    """Its series leave the scrape while it is unloaded; loaded again, they go on from where they stopped:
    a scraper never sees a counter fall (only the last RETIRED_HANDLES unloaded versions are remembered)."""
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, MetricsConfig(process_metrics=False))
    first = metrics.servable("m", "1")
    first.record_success(1000)
    first.record_batch(1, 1, 1, 1, 1000)
    first.release()  # unloaded (another version took over, or the model left the repository)
    assert not any(dict(labels).get("model") == "m" for _, labels in samples(registry))
    again = metrics.servable("m", "1")
    again.record_success(1000)
    got = samples(registry)
    mv = L(model="m", version="1")
    assert got[("fleetserve_inference_requests_total", L(model="m", version="1", code="OK"))] == 2
    assert got[("fleetserve_request_duration_seconds_count", mv)] == 2 and got[("fleetserve_kernel_runs_total", mv)] == 1
    again.release()
    for version in range(RETIRED_HANDLES):  # as many other versions unloaded since: the oldest is forgotten
        metrics.servable("m", str(version + 2)).release()
    assert metrics.servable("m", "1").outcomes[0] == 0


class DetachingList(list):
    """A servable's queue list whose last entry the loop detaches just after a scrape found it non-empty."""

    def __len__(self) -> int:
        n = super().__len__()
        self.clear()
        return n


def test_a_scrape_survives_the_last_servable_detaching_while_it_reads():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, MetricsConfig(process_metrics=False))
    handle = metrics.servable("m", "1")
    handle._queues = DetachingList([FakeQueue(0, None)])
    samples(registry)  # IndexError before: the list was tested, then indexed


def test_describe_matches_collect_and_two_servers_never_clash():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, MetricsConfig(process_metrics=False))
    metrics.servable("m", "1").record_success(1)
    assert {m.name for m in metrics.collect()} == {name for name, _ in FAMILIES}
    ServerMetrics(CollectorRegistry())  # a second server in the same process: its own registry, no error


@pytest.mark.parametrize("buckets, message", [
    ((), "at least one"), ((0.1, 0.1), "strictly increasing"), ((-1.0,), "positive"), ((float("inf"),), "finite"),
])
def test_bucket_configuration_is_validated(buckets, message):
    with pytest.raises(ValueError, match=message):
        MetricsConfig(latency_buckets_s=buckets)


def family_names(got: dict) -> set[str]:
    return {re.sub(r"_(bucket|sum|count|total)$", "", name) for name, _ in got}


def test_live_server_exports_every_family_with_real_values(fleetserve, traffic):
    before = scrape_metrics(fleetserve.metrics_url)
    traffic(fleetserve, 2)
    got = scrape_metrics(fleetserve.metrics_url)
    dense = dict(model="dense", version="1")

    def delta(name, labels):
        return got.get((name, labels), 0) - before.get((name, labels), 0)

    assert delta("fleetserve_inference_requests_total", L(**dense, code="OK")) == 16
    assert delta("fleetserve_inference_requests_total", L(**dense, code="INVALID_ARGUMENT")) == 2
    assert delta("fleetserve_request_duration_seconds_count", L(**dense)) == 16
    assert delta("fleetserve_queue_duration_seconds_count", L(**dense)) == 16
    runs = delta("fleetserve_kernel_runs_total", L(**dense))
    assert 1 <= runs <= 16 and delta("fleetserve_batch_size_rows_count", L(**dense)) == runs
    assert delta("fleetserve_batch_size_rows_sum", L(**dense)) == 28  # rows: 2 x 2 transports x (1+2+3+1)
    assert delta("fleetserve_compute_duration_seconds_count", L(**dense, phase="infer")) == runs
    assert delta("fleetserve_kernel_busy_seconds_total", L(**dense)) > 0
    assert got[("fleetserve_kernel_instances", L(**dense))] == 1
    assert got[("fleetserve_inflight_requests", L(**dense))] == 0 and got[("fleetserve_queue_depth", L(**dense))] == 0
    assert got[("fleetserve_models", L(state="READY"))] == 2 and got[("fleetserve_models", L(state="UNAVAILABLE"))] == 1
    assert got[("fleetserve_model_load_failures_total", L(model="broken"))] == 1
    assert got[("fleetserve_model_load_duration_seconds_count", L())] == 3  # two loads and the failed one
    assert got[("fleetserve_server_ready", L())] == 1
    assert got[("fleetserve_scheduler_run_time_per_row_seconds", L(**dense))] >= 0  # fitted in every mode
    assert 0 < got[("fleetserve_scheduler_budget_seconds", L(model="add_one", version="1"))] <= 0.45  # 90% of 500 ms
    assert ("process_resident_memory_bytes", L()) in got and ("process_cpu_seconds_total", L()) in got
    names = family_names(got)
    # a sequence model's family has samples only for sequence models (server/tests/test_sequence_batching.py)
    assert {name for name, _ in FAMILIES} - {"fleetserve_sequences_live"} <= names
    assert "fleetserve_sequences_live" not in names
    gpu = {m.name for m in GpuCollector(None, []).describe()}  # type: ignore[arg-type]
    if gpu_collector() is None:
        assert not (gpu & names), "GPU families must be absent on a host without a GPU"
    else:
        assert gpu <= names


@pytest.mark.parametrize("accept", ["application/openmetrics-text; version=x", "text/plain; version=1.0.x"])
def test_a_scrape_with_an_accept_header_that_cannot_be_read_gets_the_text_format(fleetserve, accept):
    """prometheus_client raises on a version that is not numbers; the scraper gets 0.0.4, not a 500."""
    reply = requests.get(fleetserve.metrics_url, headers={"Accept": accept}, timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "fleetserve_server_ready 1.0" in reply.text
    assert "Error handling request" not in fleetserve.log


def test_a_request_that_fails_to_decode_is_counted_on_a_stream_as_on_a_unary_call(fleetserve):
    """Both gRPC methods count it once, under the model it names and version "" (it reached no version)."""
    request = service_pb2.ModelInferRequest(model_name="dense")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend([0.0] * 15)
    key = ("fleetserve_inference_requests_total", L(model="dense", version="", code="INVALID_ARGUMENT"))
    before = scrape_metrics(fleetserve.metrics_url).get(key, 0)
    with grpc.insecure_channel(fleetserve.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request, timeout=10)
        answers = list(stub.ModelStreamInfer(iter([request, request]), timeout=10))
    wrong = "input 'INPUT0': shape [1, 16] needs 16 elements, but fp32_contents holds 15"
    assert [a.error_message for a in answers] == [wrong, wrong]
    assert scrape_metrics(fleetserve.metrics_url).get(key, 0) - before == 3


def test_a_rest_body_that_does_not_inflate_is_counted_as_its_json_would_be(fleetserve):
    """A body that is not the gzip its Content-Encoding says is the caller's INVALID_ARGUMENT (400), counted as
    a body that is not JSON is; the HTTP layer's own refusals (415 here) are not inference requests."""
    url = f"{fleetserve.http_url}/v2/models/dense/infer"
    key = ("fleetserve_inference_requests_total", L(model="dense", version="", code="INVALID_ARGUMENT"))
    before = scrape_metrics(fleetserve.metrics_url).get(key, 0)
    assert requests.post(url, data=b"not gzip", headers={"Content-Encoding": "gzip"}, timeout=10).status_code == 400
    assert requests.post(url, data=b"{not json", timeout=10).status_code == 400
    assert requests.post(url, data=b"{}", headers={"Content-Encoding": "br"}, timeout=10).status_code == 415
    assert scrape_metrics(fleetserve.metrics_url).get(key, 0) - before == 2


async def test_a_request_that_fails_on_an_unexpected_error_is_counted_as_internal(tmp_path, monkeypatch):
    """Anything but a ServingError while decoding (a bug) reaches the caller as INTERNAL, and is counted so on
    every transport: the outcomes add up to what callers saw."""
    from server import http_service
    from server.app import App
    from server.grpc_codec import RequestDecoder
    from server.settings import Settings

    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})
    app = App(Settings(model_repository=repo, host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0))
    await app.start()

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(RequestDecoder, "decode", broken)
    monkeypatch.setattr(http_service, "decode_infer_request", broken)
    request = service_pb2.ModelInferRequest(model_name="dense", id="r")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            replies = [r async for r in stub.ModelStreamInfer(iter([request]), timeout=10)]
            assert [r.error_message for r in replies] == ["internal server error; the server log has the details"]
        reply = await asyncio.to_thread(requests.post, f"http://127.0.0.1:{app.http_port}/v2/models/dense/infer",
                                        data=b"{}", timeout=10)
        assert reply.status_code == 500
    finally:
        await app.stop()
    key = ("fleetserve_inference_requests_total", L(model="dense", version="", code="INTERNAL"))
    assert samples(app.metrics_registry)[key] == 3


def test_readme_documents_every_exported_family():
    text = README.read_text()
    gpu = {m.name for m in GpuCollector(None, []).describe()}  # type: ignore[arg-type]
    missing = [name for name, _ in FAMILIES if name not in text] + [name for name in gpu if name not in text]
    assert not missing, f"README.md 'Metrics' lacks {missing}"


def test_gpu_collector_reports_each_readable_gpu_under_its_own_names_and_tritons():
    registry = CollectorRegistry()
    nvml = FakeNvml({"ok": FakeGpu("GPU-0a"), "no-power": FakeGpu("GPU-1b", utilization_percent=5, power_mw=None)})
    registry.register(GpuCollector(nvml, ["ok", "gone", "no-power"]))  # type: ignore[arg-type]
    got = samples(registry)
    gib = float(1 << 30)
    assert got == {("fleetserve_gpu_utilization_ratio", L(gpu="0")): 0.37,
                   ("fleetserve_gpu_memory_used_bytes", L(gpu="0")): 3 * gib,
                   ("fleetserve_gpu_memory_total_bytes", L(gpu="0")): 80 * gib,
                   ("fleetserve_gpu_utilization_ratio", L(gpu="2")): 0.05,
                   ("fleetserve_gpu_memory_used_bytes", L(gpu="2")): 3 * gib,
                   ("fleetserve_gpu_memory_total_bytes", L(gpu="2")): 80 * gib,
                   # Triton's names, units and label, which perf_analyzer --collect-metrics parses
                   ("nv_gpu_utilization", L(gpu_uuid="GPU-0a")): 0.37,
                   ("nv_gpu_power_usage", L(gpu_uuid="GPU-0a")): 123.456,  # watts (NVML says milliwatts)
                   ("nv_gpu_memory_used_bytes", L(gpu_uuid="GPU-0a")): 3 * gib,
                   ("nv_gpu_memory_total_bytes", L(gpu_uuid="GPU-0a")): 80 * gib,
                   ("nv_gpu_utilization", L(gpu_uuid="GPU-1b")): 0.05,  # no power reading: that sample left out
                   ("nv_gpu_memory_used_bytes", L(gpu_uuid="GPU-1b")): 3 * gib,
                   ("nv_gpu_memory_total_bytes", L(gpu_uuid="GPU-1b")): 80 * gib}

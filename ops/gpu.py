"""GPU utilisation, memory and power from NVML, exported only where a GPU is present.

``gpu_collector()`` returns a collector when nvidia-ml-py (the optional ``[gpu]``
extra) imports and NVML reports at least one device, else ``None``: on a
CPU-only host the GPU families are simply absent. NVML is read when scraped,
nothing runs in between.

Two sets of names come from the same reading. fleetserve's own
(``fleetserve_gpu_*``, labelled by device index) follow Prometheus conventions.
Triton's four (``nv_gpu_utilization``, ``nv_gpu_power_usage``,
``nv_gpu_memory_used_bytes``, ``nv_gpu_memory_total_bytes``, labelled
``gpu_uuid``) are the ones ``perf_analyzer --collect-metrics`` parses from
/metrics: their names, units (a 0-1 ratio, watts, bytes) and label are Triton's,
so perf_analyzer's GPU columns fill in against fleetserve as against Triton.

Imports nothing from fleetserve.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

OWN_FAMILIES = ("fleetserve_gpu_utilization_ratio", "fleetserve_gpu_memory_used_bytes",
                "fleetserve_gpu_memory_total_bytes")
# The GPU families perf_analyzer reads (and Triton exports), with Triton's help texts.
TRITON_FAMILIES = {
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0) (NVML; Triton's name, read by perf_analyzer)",
    "nv_gpu_power_usage": "GPU power usage in watts (NVML; Triton's name, read by perf_analyzer)",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes (NVML; Triton's name, read by perf_analyzer)",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes (NVML; Triton's name, read by perf_analyzer)",
}

_TRITON_SAMPLE = re.compile(rb"^(nv_gpu_[a-z_]+\{[^}\n]*\} )([^ \n]+)$", re.MULTILINE)


def write_triton_values_in_full(exposition: bytes) -> bytes:
    """``exposition`` (a /metrics body) with the nv_gpu_* sample values in fixed notation, as Triton writes them.

    prometheus_client writes 3.2 GiB as ``3.221225472e+09``; perf_analyzer reads a value as digits, a point and
    digits, so it would read 3 bytes. Triton writes ``3221225472.000000``, which this does too. Other lines are
    left as they are."""
    if b"nv_gpu_" not in exposition:
        return exposition
    return _TRITON_SAMPLE.sub(lambda m: m.group(1) + b"%f" % float(m.group(2)), exposition)


@dataclass(frozen=True)
class GpuReading:
    """One device at one scrape; ``uuid`` or ``power_w`` is None where NVML cannot tell it."""

    index: int
    uuid: str | None
    utilization: float  # 0-1
    memory_used_bytes: float
    memory_total_bytes: float
    power_w: float | None


class GpuCollector(Collector):
    """fleetserve_gpu_* per GPU index, and Triton's nv_gpu_* per GPU UUID (see the module docstring)."""

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles

    def _read(self, index: int, handle: Any) -> GpuReading | None:
        nvml = self._nvml
        try:
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as exc:  # a device that fell off the bus: report the others
            log.warning("GPU %d: NVML read failed: %s", index, exc)
            return None
        try:
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)  # bytes in older nvidia-ml-py
        except nvml.NVMLError:
            uuid = None
        try:
            power_w: float | None = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # NVML reports milliwatts
        except nvml.NVMLError:  # not supported on this board: the sample is left out, as Triton leaves it
            power_w = None
        return GpuReading(index, uuid, rates.gpu / 100.0, float(memory.used), float(memory.total), power_w)

    def collect(self) -> Iterable[Metric]:
        util = GaugeMetricFamily(OWN_FAMILIES[0], "Fraction of the last sample period a kernel ran on the GPU (NVML)",
                                 labels=["gpu"])
        used = GaugeMetricFamily(OWN_FAMILIES[1], "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily(OWN_FAMILIES[2], "GPU memory installed (NVML)", labels=["gpu"])
        triton = {name: GaugeMetricFamily(name, text, labels=["gpu_uuid"]) for name, text in TRITON_FAMILIES.items()}
        for index, handle in enumerate(self._handles):
            r = self._read(index, handle)
            if r is None:
                continue
            util.add_metric([str(index)], r.utilization)
            used.add_metric([str(index)], r.memory_used_bytes)
            total.add_metric([str(index)], r.memory_total_bytes)
            if r.uuid is None:  # perf_analyzer keys every sample by the UUID: without one, nothing to give it
                continue
            triton["nv_gpu_utilization"].add_metric([r.uuid], r.utilization)
            triton["nv_gpu_memory_used_bytes"].add_metric([r.uuid], r.memory_used_bytes)
            triton["nv_gpu_memory_total_bytes"].add_metric([r.uuid], r.memory_total_bytes)
            if r.power_w is not None:
                triton["nv_gpu_power_usage"].add_metric([r.uuid], r.power_w)
        return [util, used, total, *triton.values()]

    def describe(self) -> Iterable[Metric]:
        return [Metric(n, "", "gauge") for n in (*OWN_FAMILIES, *TRITON_FAMILIES)]


def gpu_collector() -> GpuCollector | None:
    """A collector over every GPU NVML sees, or ``None`` without nvidia-ml-py, a driver or a device."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except pynvml.NVMLError as exc:
        log.info("no GPU metrics: NVML is not usable here (%s)", exc)
        return None
    if not handles:
        return None
    log.info("GPU metrics on for %d device(s)", len(handles))
    return GpuCollector(pynvml, handles)

"""GPU utilisation and memory from NVML, exported only where a GPU is present.

``gpu_collector()`` returns a collector when nvidia-ml-py (the optional ``[gpu]``
extra) imports and NVML reports at least one device, else ``None``: on a
CPU-only host the fleetserve_gpu_* families are simply absent. NVML is read
when scraped, nothing runs in between.

Imports nothing from fleetserve.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    """fleetserve_gpu_utilization_ratio, fleetserve_gpu_memory_used_bytes and _total_bytes per GPU index."""

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles

    def collect(self) -> Iterable[Metric]:
        util = GaugeMetricFamily("fleetserve_gpu_utilization_ratio",
                                 "Fraction of the last sample period a kernel ran on the GPU (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("fleetserve_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("fleetserve_gpu_memory_total_bytes", "GPU memory installed (NVML)", labels=["gpu"])
        for index, handle in enumerate(self._handles):
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except self._nvml.NVMLError as exc:  # a device that fell off the bus: report the others
                log.warning("GPU %d: NVML read failed: %s", index, exc)
                continue
            util.add_metric([str(index)], rates.gpu / 100.0)
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
        return [util, used, total]

    def describe(self) -> Iterable[Metric]:
        return [Metric(n, "", "gauge") for n in ("fleetserve_gpu_utilization_ratio", "fleetserve_gpu_memory_used_bytes",
                                                 "fleetserve_gpu_memory_total_bytes")]


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

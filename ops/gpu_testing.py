"""A stand-in for the slice of pynvml that ``ops.gpu.GpuCollector`` reads, for tests on hosts without a GPU.

``FakeNvml(devices)`` answers for handles that are keys of ``devices``; a handle named ``"gone"`` has fallen
off the bus (every read raises ``NVMLError``), and a device whose ``power_mw`` is None does not report power.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeGpu:
    uuid: str
    utilization_percent: int = 37
    memory_used_bytes: int = 3 << 30
    memory_total_bytes: int = 80 << 30
    power_mw: int | None = 123_456


@dataclass(frozen=True)
class _Rates:
    gpu: int


@dataclass(frozen=True)
class _Memory:
    used: int
    total: int


class FakeNvml:
    class NVMLError(Exception):
        pass

    def __init__(self, devices: dict[str, FakeGpu]) -> None:
        self.devices = devices

    def _device(self, handle: str) -> FakeGpu:
        if handle not in self.devices:
            raise self.NVMLError("GPU is lost")
        return self.devices[handle]

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> _Rates:
        return _Rates(self._device(handle).utilization_percent)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> _Memory:
        device = self._device(handle)
        return _Memory(device.memory_used_bytes, device.memory_total_bytes)

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return self._device(handle).uuid

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        power = self._device(handle).power_mw
        if power is None:
            raise self.NVMLError("Not Supported")
        return power

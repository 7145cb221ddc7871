"""How many GPUs this process's CUDA sees: the ``device_id`` values onnxruntime's GPU providers take.

Triton places an instance group that lists no ``gpus`` on every visible GPU, so the kernel needs the
count. CUDA numbers the devices it sees from 0, after ``CUDA_VISIBLE_DEVICES`` (as CUDA reads it):

- set: its entries, in order, up to the first one CUDA would refuse: an empty entry, a negative or
  repeated index, an index beyond the GPUs NVML reports (when NVML answers), or text that is neither
  an index nor a UUID (``GPU-...``, ``MIG-...``). So ``""``, ``"-1"`` and ``"NoDevFiles"`` (set by
  some batch schedulers) mean no GPU, and ``"0,2,-1,1"`` means two.
- unset: every GPU NVML reports (nvidia-ml-py, the ``[gpu]`` extra). NVML ignores
  ``CUDA_VISIBLE_DEVICES`` but, in a container, sees only the GPUs given to it.
- neither: unknown. The caller then assumes one GPU and says so, as fleetserve did before it
  counted them (a group without ``gpus`` on GPU 0).

``count_visible_gpus`` is the pure rule, tested with a table; ``visible_gpus`` applies it to this
process once (the environment is read here and nowhere else) and logs what it found.
Imports nothing from fleetserve.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping

log = logging.getLogger(__name__)

ENV = "CUDA_VISIBLE_DEVICES"
_UUID_PREFIXES = ("gpu-", "mig-")


@dataclass(frozen=True)
class VisibleGpus:
    """The GPUs CUDA sees (device ids 0 .. count - 1), and how that was found (for logs)."""

    count: int
    source: str
    known: bool = True


def count_visible_gpus(cuda_visible_devices: str | None, nvml_count: int | None) -> VisibleGpus:
    """The visible GPUs given ``CUDA_VISIBLE_DEVICES`` (None: unset) and NVML's device count (None: no NVML)."""
    if cuda_visible_devices is None:
        if nvml_count is None:
            return VisibleGpus(1, f"{ENV} is not set and NVML is not available", known=False)
        return VisibleGpus(max(0, nvml_count), "NVML")
    seen: set[str] = set()
    for entry in cuda_visible_devices.split(","):
        token = entry.strip()
        if token.isascii() and token.isdigit():
            key = str(int(token))
            if nvml_count is not None and int(token) >= nvml_count:
                break
        elif token.lower().startswith(_UUID_PREFIXES) and len(token) > 4:
            key = token.lower()
        else:  # empty, negative, or not a device: CUDA stops reading here
            break
        if key in seen:
            break
        seen.add(key)
    return VisibleGpus(len(seen), f"{ENV}={cuda_visible_devices!r}")


def nvml_device_count() -> int | None:
    """The GPUs NVML reports, or None without nvidia-ml-py, a driver or NVML. Does I/O (NVML start-up)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        log.info("NVML cannot count the GPUs here: %s", exc)
        return None


def discover_visible_gpus(
    environ: Mapping[str, str] | None = None, nvml_count: Callable[[], int | None] | None = None
) -> VisibleGpus:
    """``count_visible_gpus`` for ``environ`` (default: this process's), asking ``nvml_count`` (default:
    ``nvml_device_count``) only when it helps."""
    value = (os.environ if environ is None else environ).get(ENV)
    # NVML bounds a list of indices, or counts the GPUs when the variable is unset; an empty or
    # "-1" value, or UUIDs alone, need no NVML start-up.
    needs_nvml = value is None or any(part.strip().isascii() and part.strip().isdigit() for part in value.split(","))
    if not needs_nvml:
        return count_visible_gpus(value, None)
    return count_visible_gpus(value, (nvml_count or nvml_device_count)())


@functools.cache
def visible_gpus() -> VisibleGpus:
    """This process's visible GPUs, found once (the first GPU model load that needs them) and logged once.

    Two loads racing to be first may both count (functools.cache does not lock); they find the same.
    """
    found = discover_visible_gpus()
    if found.known:
        log.info("%d GPU%s visible (%s)", found.count, "" if found.count == 1 else "s", found.source)
    else:
        log.warning(
            "the number of visible GPUs is unknown (%s): an instance group without gpus runs on GPU 0 only; "
            "install nvidia-ml-py (the [gpu] extra) or set %s", found.source, ENV,
        )
    return found

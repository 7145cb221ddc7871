"""Counting the GPUs CUDA sees, from CUDA_VISIBLE_DEVICES and NVML, without a GPU."""

from __future__ import annotations

import logging
import sys

import pytest

import ops.visible_gpus as visible_module
from ops.visible_gpus import VisibleGpus, count_visible_gpus, discover_visible_gpus

UUID_A = "GPU-8a1f0c3e-5d44-2b1a-9c70-1f2e3d4c5b6a"
UUID_B = "GPU-0b9e8d7c-6a5f-4e3d-2c1b-0a9f8e7d6c5b"


@pytest.mark.parametrize(("value", "nvml", "count"), [
    ("0,1", None, 2),
    ("0,1", 8, 2),
    ("3,1", 4, 2),  # any installed GPUs, in any order: CUDA numbers them 0, 1
    ("0,1,2,3", 2, 2),  # an index beyond the installed GPUs ends the list, as in CUDA
    ("0,2,-1,1", None, 2),  # CUDA's own example: -1 hides what follows
    ("-1", 4, 0),
    ("", 4, 0),  # set but empty: no GPU
    ("NoDevFiles", 4, 0),  # what some batch schedulers set when a job has no GPU
    ("none", 4, 0),
    ("0,0", 4, 1),  # a repeated device ends the list
    ("0,1,", 4, 2),  # so does an empty entry
    (" 0 , 1 ", 4, 2),
    (f"{UUID_A},{UUID_B}", None, 2),
    (f"{UUID_A},{UUID_A}", None, 1),
    ("MIG-4b2a9c1d-0e3f-5a6b-7c8d-9e0f1a2b3c4d", 1, 1),
    (f"0,{UUID_B}", 2, 2),
    ("GPU-", 4, 0),
    ("\u00b2", 4, 0),  # a digit to str.isdigit, not an index to CUDA
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value, nvml, count):
    found = count_visible_gpus(value, nvml)
    assert found == VisibleGpus(count, f"CUDA_VISIBLE_DEVICES={value!r}")


@pytest.mark.parametrize(("nvml", "expected"), [
    (8, VisibleGpus(8, "NVML")),
    (0, VisibleGpus(0, "NVML")),
    (None, VisibleGpus(1, "CUDA_VISIBLE_DEVICES is not set and NVML is not available", known=False)),
])
def test_unset_counts_what_nvml_reports_else_one_gpu_of_unknown_count(nvml, expected):
    assert count_visible_gpus(None, nvml) == expected


@pytest.mark.parametrize(("environ", "asks_nvml", "count"), [
    ({}, True, 3),
    ({"CUDA_VISIBLE_DEVICES": "0,5"}, True, 1),  # NVML bounds the indices
    ({"CUDA_VISIBLE_DEVICES": ""}, False, 0),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, False, 0),
    ({"CUDA_VISIBLE_DEVICES": UUID_A}, False, 1),
])
def test_discovery_asks_nvml_only_when_it_helps(environ, asks_nvml, count):
    asked: list[bool] = []

    def nvml() -> int:
        asked.append(True)
        return 3

    assert discover_visible_gpus(environ, nvml).count == count
    assert bool(asked) == asks_nvml


def test_without_nvidia_ml_py_nvml_counts_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert visible_module.nvml_device_count() is None


def test_this_process_is_counted_once_and_an_unknown_count_is_logged(monkeypatch, caplog):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(visible_module, "nvml_device_count", lambda: None)
    visible_module.visible_gpus.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="ops.visible_gpus"):
            first, second = visible_module.visible_gpus(), visible_module.visible_gpus()
        assert first == second == VisibleGpus(1, "CUDA_VISIBLE_DEVICES is not set and NVML is not available",
                                               known=False)
        assert caplog.text.count("the number of visible GPUs is unknown") == 1, caplog.text
        assert "an instance group without gpus runs on GPU 0 only" in caplog.text
    finally:
        visible_module.visible_gpus.cache_clear()

"""A group without gpus on every visible GPU (Triton's meaning), with onnxruntime's sessions recorded.

The test install is onnxruntime's CPU build: ``kernels.testing.GpuSessions`` creates CPU sessions that
report the providers asked for, and the visible GPUs are injected, so no GPU is needed.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime
import pytest

import kernels.ort as ort_module
from kernels.ort import GroupPlacement, KernelOptions, OrtKernel, SessionPlan, describe_plans
from kernels.testing import GPU_BUILD, GpuSessions, SessionRequest
from model_store.testing import write_add_constant_model
from ops.errors import BackendError
from ops.visible_gpus import VisibleGpus

TRT, CUDA, CPU = GPU_BUILD
TWO_GPUS = VisibleGpus(2, "CUDA_VISIBLE_DEVICES='0,1'")


@pytest.fixture
def model(tmp_path):
    return write_add_constant_model(tmp_path / "model.onnx", features=4)


@pytest.fixture
def sessions(monkeypatch) -> GpuSessions:
    """onnxruntime as a GPU build on a machine of 8 cores whose GPU providers start."""
    recorder = GpuSessions()
    monkeypatch.setattr(onnxruntime, "InferenceSession", recorder)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_BUILD))
    monkeypatch.setattr(ort_module, "available_cores", lambda: 8)
    return recorder


def two_gpus() -> VisibleGpus:
    return TWO_GPUS


def test_a_group_without_gpus_runs_count_instances_on_each_visible_gpu(model, sessions):
    """instance_group [ { count: 2, kind: KIND_GPU } ] on 2 visible GPUs: four instances, one session per GPU,
    each provider told its device_id, and 8 cores / 4 instances = 2 intra-op threads each."""
    kernel = OrtKernel(model, KernelOptions(
        providers=("tensorrt",), groups=(GroupPlacement(2),),
        provider_options={TRT: {"trt_fp16_enable": "1"}, CUDA: {"cudnn_conv_algo_search": "HEURISTIC"}},
    ), find_gpus=two_gpus)
    kernel.load()
    try:
        assert sessions.created == [
            SessionRequest((TRT, CUDA, CPU), ({"trt_fp16_enable": "1", "device_id": str(gpu)},
                                              {"cudnn_conv_algo_search": "HEURISTIC", "device_id": str(gpu)}, {}), 2)
            for gpu in (0, 1)
        ]
        assert kernel.instances == kernel.executor._max_workers == 4
        assert describe_plans(kernel.plans) == "instances: 2 on GPU 0, 2 on GPU 1"
        assert kernel.provider_choice is not None and kernel.provider_choice.providers == (TRT, CUDA, CPU)
        feeds = {"INPUT0": np.zeros((1, 4), np.float32)}
        results = list(kernel.executor.map(lambda _: kernel.run(feeds)["OUTPUT0"], range(8)))
        for out in results:
            np.testing.assert_array_equal(out, np.ones((1, 4)))
    finally:
        kernel.close()


def test_a_model_without_instance_groups_gets_one_instance_per_visible_gpu(model, sessions):
    """KIND_AUTO, count 1, on a machine with GPUs: one instance on each (the default chain, no options)."""
    kernel = OrtKernel(model, KernelOptions(), find_gpus=lambda: VisibleGpus(3, "NVML"))
    kernel.load()
    try:
        assert [(r.provider_options, r.intra_op_threads) for r in sessions.created] == [
            (({"device_id": str(gpu)}, {"device_id": str(gpu)}, {}), 8 // 3) for gpu in range(3)
        ]
        assert kernel.plans == tuple(SessionPlan(gpu, 1, ({"device_id": str(gpu)},) * 2 + ({},)) for gpu in range(3))
        assert kernel.instances == 3
    finally:
        kernel.close()


def test_listed_gpus_are_used_as_listed_without_counting_the_visible_ones(model, sessions):
    def never() -> VisibleGpus:
        raise AssertionError("the visible GPUs were counted for groups that list theirs")

    kernel = OrtKernel(model, KernelOptions(groups=(GroupPlacement(2, (1,)),)), find_gpus=never)
    kernel.load()
    try:
        assert [r.provider_options[1] for r in sessions.created] == [{"device_id": "1"}]
        assert kernel.instances == 2
    finally:
        kernel.close()


def test_with_no_visible_gpu_one_cpu_session_serves_count_instances(model, sessions, caplog):
    """CUDA_VISIBLE_DEVICES="" on a GPU build: the GPU providers could not start, so the CPU serves the group's
    count (not count x GPUs), and the log says why."""
    kernel = OrtKernel(model, KernelOptions(providers=("cuda",), groups=(GroupPlacement(2),)),
                       find_gpus=lambda: VisibleGpus(0, "CUDA_VISIBLE_DEVICES=''"))
    with caplog.at_level(logging.WARNING, logger="kernels.ort"):
        kernel.load()
    try:
        assert sessions.created == [SessionRequest((CPU,), ({},), 4)]
        assert kernel.plans == (SessionPlan(None, 2, ({},)),) and kernel.instances == 2
        assert kernel.provider_choice is not None and kernel.provider_choice.providers == (CPU,)
        assert kernel.provider_choice.fell_back_to_cpu
        assert ("execution providers cuda are not used (no GPU is visible: CUDA_VISIBLE_DEVICES=''); "
                "using CPUExecutionProvider") in caplog.text
    finally:
        kernel.close()


def test_a_gpu_build_whose_providers_do_not_start_serves_the_cpus_count_with_threads_to_match(
    model, monkeypatch, caplog
):
    """Planned as 2 x 2 GPUs (2 threads each on 8 cores), the first session comes up on the CPU: one CPU session
    serves the group's 2 instances, made again with 4 threads so instances x threads still fits the cores."""
    recorder = GpuSessions(gpus_start=False)
    monkeypatch.setattr(onnxruntime, "InferenceSession", recorder)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort_module, "available_cores", lambda: 8)
    kernel = OrtKernel(model, KernelOptions(groups=(GroupPlacement(2),)), find_gpus=two_gpus)
    with caplog.at_level(logging.WARNING, logger="kernels.ort"):
        kernel.load()
    try:
        assert recorder.created == [SessionRequest((CUDA, CPU), ({"device_id": "0"}, {}), 2),
                                    SessionRequest((CPU,), ({},), 4)]
        assert kernel.plans == (SessionPlan(None, 2, ({},)),) and kernel.instances == kernel.executor._max_workers == 2
        assert "the GPU providers did not start; one CPU session serves all 2 instances" in caplog.text
    finally:
        kernel.close()


def test_the_instances_and_their_threads_exist_once_loaded(tmp_path):
    kernel = OrtKernel(tmp_path / "model.onnx", KernelOptions())
    assert kernel.instances == 0
    with pytest.raises(BackendError, match="not loaded"):
        _ = kernel.executor
    kernel.close()  # nothing to release yet

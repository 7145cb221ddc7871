"""OrtKernel on real onnxruntime sessions over small models the tests write."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import kernels.ort as ort_module
from kernels.ort import (
    GroupPlacement, KernelOptions, OrtKernel, SessionPlan, default_intra_op_threads, describe_plans, plan_sessions,
)
from kernels.providers import ProviderChoice
from model_store.testing import write_add_constant_model
from ops.errors import ConfigError


@pytest.fixture
def add_one(tmp_path):
    kernel = OrtKernel(write_add_constant_model(tmp_path / "model.onnx", features=4), KernelOptions())
    kernel.load()
    yield kernel
    kernel.close()


def test_a_batch_is_merged_run_once_and_split_back_per_request_as_views(add_one):
    requests = [{"INPUT0": np.full((rows, 4), i, np.float32)} for i, rows in enumerate((1, 3, 2))]
    result = add_one.run_batch(requests)
    assert [r["OUTPUT0"].shape for r in result.outputs] == [(1, 4), (3, 4), (2, 4)]
    for i, r in enumerate(result.outputs):
        np.testing.assert_array_equal(r["OUTPUT0"], np.full(r["OUTPUT0"].shape, i + 1, np.float32))
    first, second = result.outputs[0]["OUTPUT0"], result.outputs[1]["OUTPUT0"]
    assert first.base is not None and first.base is second.base  # slices of one output, not copies
    assert result.end_ns > 0 and min(result.input_ns, result.infer_ns, result.output_ns) >= 0


def test_a_single_request_runs_without_merging(add_one):
    result = add_one.run_batch([{"INPUT0": np.zeros((2, 4), np.float32)}])
    np.testing.assert_array_equal(result.outputs[0]["OUTPUT0"], np.ones((2, 4), np.float32))


def test_a_file_that_is_not_a_model_is_a_config_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not onnx")
    with pytest.raises(ConfigError, match="cannot load"):
        OrtKernel(path, KernelOptions()).load()


@pytest.mark.parametrize("level, expected", [
    (None, "ORT_ENABLE_ALL"),
    (0, "ORT_ENABLE_ALL"),
    (-1, "ORT_ENABLE_BASIC"),  # Triton's numbering, not onnxruntime's
    (1, "ORT_ENABLE_EXTENDED"),
    (2, "ORT_DISABLE_ALL"),
])
def test_the_graph_level_has_tritons_meaning(tmp_path, level, expected):
    kernel = OrtKernel(write_add_constant_model(tmp_path / "model.onnx", features=4),
                       KernelOptions(graph_optimization_level=level))
    kernel.load()
    try:
        options = kernel._sessions[0].get_session_options()  # type: ignore[attr-defined]
        assert options.graph_optimization_level.name == expected
        np.testing.assert_array_equal(kernel.run({"INPUT0": np.zeros((1, 4), np.float32)})["OUTPUT0"], np.ones((1, 4)))
    finally:
        kernel.close()


def test_an_unknown_graph_level_is_a_config_error(tmp_path):
    model = write_add_constant_model(tmp_path / "model.onnx", features=4)
    kernel = OrtKernel(model, KernelOptions(graph_optimization_level=5))
    with pytest.raises(ConfigError, match="optimization.graph.level 5"):
        kernel.load()


@pytest.mark.parametrize("instances, cores, threads", [
    (1, 2, 2),
    (2, 16, 8),  # instances x threads fits the cores
    (3, 16, 5),
    (4, 2, 1),  # never below one
])
def test_default_threads_share_the_cores_among_the_instances(instances, cores, threads):
    assert default_intra_op_threads(instances, cores) == threads


@pytest.mark.parametrize("allow_gpu, reason", [(True, "not in this onnxruntime build"),
                                               (False, "the instance group is KIND_CPU")])
def test_a_requested_gpu_provider_left_out_is_logged_with_the_reason(tmp_path, caplog, allow_gpu, reason):
    """The test install (.[dev]) has onnxruntime's CPU build, with no CUDA: a KIND_GPU model falls back for
    the build's sake, a KIND_CPU one for its own config's; the warning must not blame the build for the config."""
    path = write_add_constant_model(tmp_path / "model.onnx", features=4)
    kernel = OrtKernel(path, KernelOptions(providers=("cuda",), allow_gpu=allow_gpu))
    with caplog.at_level("WARNING", logger="kernels.ort"):
        kernel.load()
    kernel.close()
    assert kernel.provider_choice is not None and kernel.provider_choice.providers == ("CPUExecutionProvider",)
    assert f"execution providers cuda are not used ({reason}); using CPUExecutionProvider" in caplog.text


GPU_CHAIN = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_each_gpu_gets_a_session_serving_its_instances_with_its_device_id():
    """instance_group { count: 2 gpus: [0, 1] }: four instances, two on each GPU (Triton's meaning)."""
    assert plan_sessions(GPU_CHAIN, (0, 0, 1, 1)) == (
        SessionPlan(0, 2, ({"device_id": "0"}, {"device_id": "0"}, {})),
        SessionPlan(1, 2, ({"device_id": "1"}, {"device_id": "1"}, {})),
    )
    assert plan_sessions(("CUDAExecutionProvider", "CPUExecutionProvider"), (3, 1, 1)) == (
        SessionPlan(3, 1, ({"device_id": "3"}, {})),
        SessionPlan(1, 2, ({"device_id": "1"}, {})),
    )


def test_on_the_cpu_alone_one_session_serves_every_instance():
    plans = plan_sessions(("CPUExecutionProvider",), (0, 0, 1, 1))
    assert plans == (SessionPlan(None, 4, ({},)),)
    assert describe_plans(plans) == "4 instances"
    assert describe_plans(plan_sessions(GPU_CHAIN, (0, 0, 1, 1))) == "instances: 2 on GPU 0, 2 on GPU 1"


def test_gpu_instances_without_a_gpu_provider_fall_back_to_one_cpu_session(tmp_path):
    """The test install has onnxruntime's CPU build: two GPUs' worth of instances still load, once, and all run."""
    path = write_add_constant_model(tmp_path / "model.onnx", features=4)
    kernel = OrtKernel(path, KernelOptions(groups=(GroupPlacement(2, (0, 1)),)))
    kernel.load()
    try:
        assert kernel.provider_choice is not None and kernel.provider_choice.providers == ("CPUExecutionProvider",)
        assert kernel.plans == (SessionPlan(None, 4, ({},)),) and len(kernel._sessions) == 1
        assert kernel.executor._max_workers == kernel.instances == 4
        np.testing.assert_array_equal(kernel.run({"INPUT0": np.zeros((1, 4), np.float32)})["OUTPUT0"], np.ones((1, 4)))
    finally:
        kernel.close()


def test_runs_go_to_the_session_with_the_fewest_runs_in_flight(tmp_path, monkeypatch):
    """Two sessions of two instances each (as two GPUs would have; CPU sessions here): four runs at once use both."""
    monkeypatch.setattr(ort_module, "plan_sessions", lambda providers, ids, options=None: (SessionPlan(None, 2, ({},)),) * 2)
    kernel = OrtKernel(write_add_constant_model(tmp_path / "model.onnx", features=4), KernelOptions(groups=(GroupPlacement(4),)))
    kernel.load()
    inside = threading.Barrier(5)
    used: list[int] = []
    hold = [True]

    class Held:
        def __init__(self, index: int, session: object) -> None:
            self.index, self.session = index, session

        def run(self, names, feeds, run_options=None):
            used.append(self.index)
            if hold[0]:
                inside.wait(10)  # all four runs in flight at once
            return self.session.run(names, feeds, run_options)

    kernel._sessions = [Held(i, s) for i, s in enumerate(kernel._sessions)]
    try:
        feeds = {"INPUT0": np.zeros((1, 4), np.float32)}
        threads = [threading.Thread(target=kernel.run, args=(feeds,)) for _ in range(4)]
        for t in threads:
            t.start()
        inside.wait(10)
        for t in threads:
            t.join(10)
        assert sorted(used) == [0, 0, 1, 1]
        assert kernel._busy == [0, 0]
        used.clear()
        hold[0] = False
        kernel.warm_up({"INPUT0": np.zeros((1, 4), np.float32)})
        assert used == [0, 1]  # every session warmed, not the first one twice
    finally:
        kernel.close()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_a_gpu_build_that_falls_back_to_the_cpu_makes_one_session_for_every_instance(tmp_path, monkeypatch, caplog):
    """onnxruntime-gpu on a machine without a usable GPU: asked for CUDA on GPUs 0 and 1, the first session
    comes up on the CPU (onnxruntime falls back by itself). The instances then share that one session."""
    monkeypatch.setattr(ort_module, "choose_providers", lambda *a, **k: ProviderChoice(
        ("CUDAExecutionProvider", "CPUExecutionProvider"), ()))
    kernel = OrtKernel(write_add_constant_model(tmp_path / "model.onnx", features=4),
                       KernelOptions(groups=(GroupPlacement(2, (0, 1)),)))
    with caplog.at_level("WARNING", logger="kernels.ort"):
        kernel.load()
    try:
        assert kernel.plans == (SessionPlan(None, 4, ({},)),) and len(kernel._sessions) == 1
        assert kernel.provider_choice is not None and kernel.provider_choice.providers == ("CPUExecutionProvider",)
        assert "the GPU providers did not start; one CPU session serves all 4 instances" in caplog.text
        np.testing.assert_array_equal(kernel.run({"INPUT0": np.zeros((1, 4), np.float32)})["OUTPUT0"], np.ones((1, 4)))
    finally:
        kernel.close()

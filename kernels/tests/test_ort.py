"""OrtKernel on real onnxruntime sessions over small models the tests write."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.ort import KernelOptions, OrtKernel, default_intra_op_threads
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
        options = kernel._session.get_session_options()  # type: ignore[attr-defined]
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

"""The test-model writers of model_store.testing and the bundled example repository.

Each writer's model is loaded by a real onnxruntime CPU session and compared
with the same math done in numpy, using the weights read back from the file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import numpy_helper

from model_store.datatypes import BY_NAME, NAMES
from model_store.examples import REPOSITORY
from model_store.examples.build import EXAMPLE_MODELS, build_repository, main
from model_store.protos import model_config_pb2
from model_store.testing import (
    IDENTITY_DATATYPES,
    IR_VERSION,
    OPSET,
    ORTVALUE_ONLY_DATATYPES,
    ModelSpec,
    reference_outputs,
    write_add_constant_model,
    write_config,
    write_dense_model,
    write_identity_model,
    write_mlp_model,
    write_model_repository,
    write_slow_model,
    write_two_io_model,
)

RNG = np.random.default_rng(1234)


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def signature(path: Path) -> dict[str, list[int | str]]:
    graph = onnx.load(str(path)).graph
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def test_models_are_opset_17_ir_8_and_written_as_model_onnx_in_a_directory(tmp_path: Path) -> None:
    path = write_add_constant_model(tmp_path / "add" / "1")
    assert path == tmp_path / "add" / "1" / "model.onnx"
    model = onnx.load(str(path))
    assert (model.ir_version, [(o.domain, o.version) for o in model.opset_import]) == (IR_VERSION, [("", OPSET)])
    assert (OPSET, IR_VERSION) == (17, 8)
    named = write_add_constant_model(tmp_path / "elsewhere.onnx")
    assert named == tmp_path / "elsewhere.onnx" and named.is_file()


def test_dense_matches_numpy(tmp_path: Path) -> None:
    path = write_dense_model(tmp_path, in_features=16, out_features=8, seed=3)
    assert signature(path) == {"INPUT0": ["batch", 16], "OUTPUT0": ["batch", 8]}
    w = weights(path)
    x = RNG.standard_normal((5, 16)).astype(np.float32)
    out = reference_outputs(path, {"INPUT0": x})["OUTPUT0"]
    assert out.dtype == np.float32 and out.shape == (5, 8)
    np.testing.assert_allclose(out, relu(x @ w["W"] + w["B"]), rtol=1e-5, atol=1e-5)
    assert 0 < np.count_nonzero(out) < out.size  # Relu is doing something


def test_dense_without_batch_dim_is_fixed_to_one(tmp_path: Path) -> None:
    path = write_dense_model(tmp_path, in_features=4, out_features=2, batch_dim=None)
    assert signature(path) == {"INPUT0": [1, 4], "OUTPUT0": [1, 2]}
    assert reference_outputs(path, {"INPUT0": np.ones((1, 4), np.float32)})["OUTPUT0"].shape == (1, 2)


def test_dense_weights_depend_on_seed_only(tmp_path: Path) -> None:
    a = write_dense_model(tmp_path / "a", seed=0).read_bytes()
    b = write_dense_model(tmp_path / "b", seed=0).read_bytes()
    c = write_dense_model(tmp_path / "c", seed=1).read_bytes()
    assert a == b != c


def test_two_io_sums_and_differences(tmp_path: Path) -> None:
    path = write_two_io_model(tmp_path, features=4)
    x, y = (RNG.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    out = reference_outputs(path, {"INPUT0": x, "INPUT1": y})
    np.testing.assert_array_equal(out["OUTPUT0"], x + y)
    np.testing.assert_array_equal(out["OUTPUT1"], x - y)
    assert list(out) == ["OUTPUT0", "OUTPUT1"]


def test_add_constant(tmp_path: Path) -> None:
    path = write_add_constant_model(tmp_path, features=16, constant=2.5)
    assert signature(path) == {"INPUT0": ["batch", 16], "OUTPUT0": ["batch", 16]}
    x = RNG.standard_normal((7, 16)).astype(np.float32)
    np.testing.assert_array_equal(reference_outputs(path, {"INPUT0": x})["OUTPUT0"], x + np.float32(2.5))


def test_mlp_outputs_are_finite_and_non_trivial(tmp_path: Path) -> None:
    path = write_mlp_model(tmp_path)
    assert signature(path) == {"INPUT0": ["batch", 256], "OUTPUT0": ["batch", 16]}
    w = weights(path)
    x = RNG.standard_normal((32, 256)).astype(np.float32)
    out = reference_outputs(path, {"INPUT0": x})["OUTPUT0"]
    expected = relu(relu(x @ w["W0"] + w["B0"]) @ w["W1"] + w["B1"]) @ w["W2"] + w["B2"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert out.shape == (32, 16) and np.isfinite(out).all()
    assert 0.1 < out.std() < 10 and (out < 0).any()  # no Relu after the last layer


def test_mlp_rejects_a_single_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        write_mlp_model(tmp_path, sizes=(8,))


def test_slow_model_is_a_norm_preserving_matmul_chain(tmp_path: Path) -> None:
    path = write_slow_model(tmp_path, features=32, repeats=5)
    nodes = onnx.load(str(path)).graph.node
    assert [n.op_type for n in nodes] == ["MatMul"] * 5
    q = weights(path)["Q"]
    x = RNG.standard_normal((9, 32)).astype(np.float32)
    out = reference_outputs(path, {"INPUT0": x})["OUTPUT0"]
    np.testing.assert_allclose(out, x @ np.linalg.matrix_power(q.astype(np.float64), 5), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(x, axis=1), rtol=1e-4)


def sample(datatype: str) -> np.ndarray:
    """A [3, 4] array with each datatype's awkward values."""
    if datatype == "BYTES":
        values: list[object] = [b"", b"a", b"nul\x00inside", "é€😀".encode(), b" ", b"x" * 1000] * 2
        return np.array(values, dtype=object).reshape(3, 4)
    if datatype == "BOOL":
        return np.array([True, False] * 6).reshape(3, 4)
    dtype = BY_NAME[datatype].numpy
    if dtype.kind == "f":
        info = np.finfo(dtype)
        special = [info.min, info.max, info.tiny, -0.0, np.inf, -np.inf, np.nan, 1.5]
        return np.array(special + [0.1, -2, 3, 1e-3], dtype=dtype).reshape(3, 4)
    iinfo = np.iinfo(dtype)
    return np.array([iinfo.min, iinfo.max, 0, 1] * 3, dtype=dtype).reshape(3, 4)


@pytest.mark.parametrize("datatype", IDENTITY_DATATYPES)
def test_identity_round_trips_exactly(tmp_path: Path, datatype: str) -> None:
    path = write_identity_model(tmp_path, datatype, dims=(4,))
    x = sample(datatype)
    out = reference_outputs(path, {"INPUT0": x})["OUTPUT0"]
    assert out.dtype == x.dtype and out.shape == x.shape
    if datatype == "BYTES":
        assert out.tolist() == x.tolist() and all(type(e) is bytes for e in out.flat)
    else:
        assert out.tobytes() == x.tobytes()  # bit-exact, NaN and -0.0 included


@pytest.mark.parametrize("datatype", ORTVALUE_ONLY_DATATYPES)
def test_ortvalue_only_datatypes_run_but_not_from_plain_numpy(tmp_path: Path, datatype: str) -> None:
    path = write_identity_model(tmp_path, datatype, dims=(4,))
    words = np.array([0x3F80, 0xBF80, 0x7FC0, 0x0000] * 3, dtype=np.uint16).reshape(3, 4)  # 1, -1, NaN, 0
    out = reference_outputs(path, {"INPUT0": words})["OUTPUT0"]
    assert out.dtype == np.uint16 and out.tobytes() == words.tobytes()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="bfloat16"):
        session.run(None, {"INPUT0": words})


def test_identity_datatype_lists_cover_the_protocol() -> None:
    assert sorted(IDENTITY_DATATYPES + ORTVALUE_ONLY_DATATYPES) == sorted(NAMES)


def test_identity_shapes(tmp_path: Path) -> None:
    assert signature(write_identity_model(tmp_path / "a", "INT32", dims=(2, -1))) == {
        "INPUT0": ["batch", 2, "d1"],
        "OUTPUT0": ["batch", 2, "d1"],
    }
    assert signature(write_identity_model(tmp_path / "b", "FP16", dims=(3,), batch=False)) == {
        "INPUT0": [3],
        "OUTPUT0": [3],
    }
    with pytest.raises(ValueError, match="unknown datatype"):
        write_identity_model(tmp_path / "c", "FLOAT")


def test_reference_outputs_rejects_bytes_onnxruntime_cannot_carry(tmp_path: Path) -> None:
    path = write_identity_model(tmp_path, "BYTES")
    with pytest.raises(ValueError, match="non-UTF-8"):
        reference_outputs(path, {"INPUT0": np.array([[b"\xff", b"", b"", b""]], dtype=object)})


def test_write_model_repository_layout(tmp_path: Path) -> None:
    root = write_model_repository(
        tmp_path / "repo",
        {
            "add": ModelSpec(write_add_constant_model, versions=(1, 3)),
            "simple": ModelSpec(
                functools.partial(write_two_io_model, features=2),
                config="""
                    max_batch_size: 4
                """,
            ),
        },
    )
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["add/1/model.onnx", "add/3/model.onnx", "simple/1/model.onnx", "simple/config.pbtxt"]
    assert (root / "simple" / "config.pbtxt").read_text() == "max_batch_size: 4\n"


def test_write_config_dedents(tmp_path: Path) -> None:
    path = write_config(tmp_path / "m", '\n    name: "m"\n    max_batch_size: 0\n')
    assert path.read_text() == 'name: "m"\nmax_batch_size: 0\n'


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_examples_build_is_deterministic_and_committed_files_are_current(tmp_path: Path) -> None:
    first = tree(build_repository(tmp_path / "a"))
    second = tree(build_repository(tmp_path / "b"))
    assert first == second
    assert sorted(first) == [
        "add_one/1/model.onnx",
        "dense/1/model.onnx",
        "mlp/1/model.onnx",
        "mlp/config.pbtxt",
        "pipeline/1/README",
        "pipeline/config.pbtxt",
        "simple/1/model.onnx",
        "simple/config.pbtxt",
    ]
    assert tree(REPOSITORY) == first, "run `python -m model_store.examples.build` and commit the result"


def test_examples_build_replaces_stale_versions_only_of_its_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dense" / "7").mkdir(parents=True)
    (tmp_path / "mine" / "1").mkdir(parents=True)
    assert main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "dense" / "7").exists() and (tmp_path / "mine" / "1").exists()
    assert "mlp/1/model.onnx" in capsys.readouterr().out


def test_example_configs_are_valid_triton_model_configs() -> None:
    simple = text_format.Parse((REPOSITORY / "simple" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (simple.name, simple.platform, simple.max_batch_size) == ("simple", "onnxruntime_onnx", 8)
    assert [(t.name, list(t.dims)) for t in simple.input] == [("INPUT0", [4]), ("INPUT1", [4])]
    assert simple.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in simple.instance_group] == [
        (1, "KIND_CPU")
    ]
    mlp = text_format.Parse((REPOSITORY / "mlp" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (mlp.max_batch_size, mlp.dynamic_batching.max_queue_delay_microseconds) == (256, 2000)
    pipeline = text_format.Parse((REPOSITORY / "pipeline" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (pipeline.platform, [s.model_name for s in pipeline.ensemble_scheduling.step]) == (
        "ensemble", ["add_one", "dense"])
    assert set(EXAMPLE_MODELS) == {"dense", "simple", "add_one", "mlp", "pipeline"}


def test_example_models_run(tmp_path: Path) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    np.testing.assert_array_equal(reference_outputs(REPOSITORY / "add_one" / "1", {"INPUT0": x})["OUTPUT0"], x + 1)
    assert reference_outputs(REPOSITORY / "dense" / "1", {"INPUT0": x})["OUTPUT0"].shape == (1, 8)
    mlp = reference_outputs(REPOSITORY / "mlp" / "1", {"INPUT0": np.ones((2, 256), np.float32)})["OUTPUT0"]
    assert mlp.shape == (2, 16) and np.isfinite(mlp).all()

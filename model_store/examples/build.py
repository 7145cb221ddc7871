"""Rebuild the bundled example model repository, deterministically.

    python -m model_store.examples.build [--out DIR]

writes, under DIR (default: ``model_store/examples/repository``):

- ``dense/1/model.onnx``: Relu(x @ W + b), 16 -> 8, no config.pbtxt (the
  server completes the config from the ONNX signature);
- ``simple/1/model.onnx`` + ``simple/config.pbtxt``: Triton's "simple" (sum and
  difference of two FP32 [4] inputs), a full Triton-format config;
- ``add_one/1/model.onnx``: x + 1 over FP32 [16];
- ``mlp/1/model.onnx`` + ``mlp/config.pbtxt``: 256 -> 1024 -> 1024 -> 16 (~5 MB);
- ``pipeline/config.pbtxt`` + ``pipeline/1/README``: an ensemble, add_one then dense (its version
  folder holds no model file; the README keeps the folder in git, the package and remote repositories,
  which carry files, not empty folders).

Each listed model's folder is removed before it is rewritten, so no stale
version survives; nothing else under DIR is touched. Two runs give
byte-identical files (model_store/tests/test_testing_models.py checks it,
and that the committed files are current). Imports only model_store.testing.
"""

from __future__ import annotations

import argparse
import functools
import shutil
from pathlib import Path
from typing import Sequence

from model_store.examples import REPOSITORY
from model_store.testing import (
    ModelSpec,
    write_add_constant_model,
    write_dense_model,
    write_mlp_model,
    write_model_repository,
    write_two_io_model,
)

SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

MLP_CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 256
dynamic_batching {
  max_queue_delay_microseconds: 2000
}
"""

PIPELINE_CONFIG = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 64
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 16 ]
  }
]
output [
  {
    name: "PLUS_ONE"
    data_type: TYPE_FP32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 8 ]
  }
]
ensemble_scheduling {
  step [
    {
      model_name: "add_one"
      model_version: -1
      input_map { key: "INPUT0" value: "INPUT0" }
      output_map { key: "OUTPUT0" value: "PLUS_ONE" }
    },
    {
      model_name: "dense"
      model_version: -1
      input_map { key: "INPUT0" value: "PLUS_ONE" }
      output_map { key: "OUTPUT0" value: "OUTPUT0" }
    }
  ]
}
"""


def _ensemble_version(folder: Path) -> None:
    (folder / "README").write_text("An ensemble's version folder holds no model file: this file keeps the folder "
                                   "in git, in the package and in remote repositories.\n", encoding="utf-8")


EXAMPLE_MODELS: dict[str, ModelSpec] = {
    "dense": ModelSpec(functools.partial(write_dense_model, in_features=16, out_features=8, seed=0)),
    "simple": ModelSpec(functools.partial(write_two_io_model, features=4), config=SIMPLE_CONFIG),
    "add_one": ModelSpec(functools.partial(write_add_constant_model, features=16, constant=1.0)),
    "mlp": ModelSpec(functools.partial(write_mlp_model, sizes=(256, 1024, 1024, 16), seed=0), config=MLP_CONFIG),
    "pipeline": ModelSpec(_ensemble_version, config=PIPELINE_CONFIG),
}


def build_repository(out: Path = REPOSITORY) -> Path:
    """Write the example models under ``out`` (replacing their folders); return ``out``."""
    for name in EXAMPLE_MODELS:
        shutil.rmtree(out / name, ignore_errors=True)
    return write_model_repository(out, EXAMPLE_MODELS)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m model_store.examples.build", description="Rebuild the example model repository."
    )
    parser.add_argument("--out", type=Path, default=REPOSITORY, help="repository root (default: %(default)s)")
    args = parser.parse_args(argv)
    root = build_repository(args.out)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] in EXAMPLE_MODELS):
        print(f"{path.stat().st_size:>10}  {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

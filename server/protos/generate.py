"""Regenerate the protobuf and gRPC modules from the repository's .proto files.

Usage: ``python -m server.protos.generate [--out DIR]`` from the repository root.

protoc (from grpcio-tools) writes ordinary modules; this script then re-homes
their descriptors from protobuf's default pool into ``model_store.protos.POOL``
so that fleetserve and tritonclient, which both define ``inference.*``
messages, can be imported in one process. ``--out`` writes elsewhere, which the
stale-stubs test uses to compare against the committed files.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("model_store/protos/model_config.proto", "server/protos/grpc_service.proto")
_DEFAULT_POOL = "_descriptor_pool.Default()"
_PRIVATE_POOL = "__import__('model_store.protos', fromlist=['POOL']).POOL"


def generate(out: Path) -> list[Path]:
    """Write the generated modules under ``out`` (mirroring the repo layout); return them."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(ROOT / p) for p in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        written = []
        for path in sorted(Path(tmp).rglob("*_pb2*.py*")):
            rel = path.relative_to(tmp)
            text = path.read_text()
            if rel.suffix == ".py" and _DEFAULT_POOL in text:
                text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            written.append(target)
        # protoc writes an empty grpc module for a proto without services.
        for empty in [p for p in written if p.name.endswith("_pb2_grpc.py") and "Stub" not in p.read_text()]:
            empty.unlink()
            written.remove(empty)
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write under (default: the repository)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()

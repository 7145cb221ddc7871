"""Imports point downward (../shared/STYLE.md): checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "batching", "model_store", "kernels", "ops", "loadtest")
TRANSPORTS = ("grpc", "grpc_health", "aiohttp", "starlette", "uvicorn")

# package -> what it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ops": ("server", "batching", "model_store", "kernels", "loadtest", *TRANSPORTS),
    "kernels": ("server", "batching", "model_store", "loadtest", *TRANSPORTS, "google.protobuf"),
    "batching": ("server", "kernels", "model_store", "loadtest", *TRANSPORTS, "google.protobuf", "numpy"),
    "model_store": ("server", "batching", "loadtest", *TRANSPORTS),
    "loadtest": ("batching", "kernels", "model_store.registry"),
}
# server/ modules that must stay transport-free: the dataplane and what it is built from
TRANSPORT_FREE = ("server/dataplane.py", "server/servable.py", "server/types.py", "server/codec.py",
                  "server/response_cache.py", "server/cache_codec.py", "server/rate_limit.py",
                  "server/classification.py", "server/shared_memory.py")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "tests" not in p.parts and not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))]


def _hits(names: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names for b in banned if n == b or n.startswith(b + "."))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_downward(package):
    bad = {}
    for path in modules(package):
        hits = _hits(imports_of(path), FORBIDDEN[package])
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    assert not bad, f"layering violations: {bad}"


@pytest.mark.parametrize("module", TRANSPORT_FREE)
def test_dataplane_never_imports_a_transport_or_protobuf(module):
    hits = _hits(imports_of(ROOT / module), (*TRANSPORTS, "google.protobuf", "server.protos", "server.grpc_service",
                                              "server.grpc_codec", "server.grpc_errors"))
    assert not hits, f"{module} imports {hits}"


def test_nothing_imports_server_from_below():
    for package in ("batching", "kernels", "model_store", "ops"):
        for path in modules(package):
            assert not _hits(imports_of(path), ("server",)), path


def test_the_check_itself_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import grpc\nfrom server.dataplane import DataPlane\n")
    assert _hits(imports_of(bad), FORBIDDEN["batching"]) == ["grpc", "server.dataplane"]

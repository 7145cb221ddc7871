"""``fleetserve models``: what a repository holds and whether each version loads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Hashable

from model_store.registry import ModelRegistry
from model_store.repository import ModelRepository
from model_store.repository import ModelSource
from server.ensemble import load_ensemble
from server.servable import ServingDefaults, load_servable
from server.served import ServedVersion
from server.types import InputTensor, OutputTensor


async def _not_serving(model: str, version: str, inputs: list[InputTensor], outputs: list[str],
                       deadline: float | None, request_id: str, priority: int, timeout_us: int,
                       sequence: "tuple[Hashable, bool, bool] | None") -> list[OutputTensor]:
    raise AssertionError("fleetserve models loads ensembles to check them, and runs none")


async def _index(root: Path) -> list[tuple[str, str, str, str, str]]:
    async def load(source: ModelSource, version: int) -> ServedVersion:
        if source.is_ensemble:
            return await load_ensemble(source, version, registry, _not_serving)
        return await load_servable(source, version, ServingDefaults(warmup=False))

    registry: ModelRegistry[ServedVersion] = ModelRegistry(ModelRepository(root), load)
    await registry.load_all()
    rows = []
    for e in registry.index():
        io = ""
        if e.state.value == "READY":
            config = registry.get(e.name, e.version).config
            io = " ".join(f"{s.name}:{s.datatype.name}{list(s.shape_with_batch(config.max_batch_size))}"
                          for s in config.inputs)
        rows.append((e.name, e.version or "-", e.state.value, io, e.reason))
    await registry.close()
    return rows


def print_models(root: Path) -> int:
    """Print one line per model version; exit status 1 when any is UNAVAILABLE."""
    rows = asyncio.run(_index(root))
    header = ("MODEL", "VERSION", "STATE", "INPUTS", "REASON" if any(r[4] for r in rows) else "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print(("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4]).rstrip())
    return 1 if any(r[2] != "READY" for r in rows) else 0

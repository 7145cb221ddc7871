"""What the dataplane, the app and the fleet use of one loaded model version, whatever serves it.

Two kinds serve: a model's version runs its own kernel behind its batcher (server/servable.py,
``Servable``); an ensemble's version runs other models' versions, step by step, through the
dataplane (server/ensemble.py, ``EnsembleServable``). The registry holds both as ``ServedVersion``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Hashable

import numpy as np

from model_store.config import ModelConfig
from model_store.labels import Labels
from ops.metrics import ServableMetrics
from ops.statistics import ModelStats


class ServedVersion:
    """One model version as the registry serves it; see the module docstring. Loop-bound."""

    config: ModelConfig
    version: int
    version_str: str
    stats: ModelStats
    metrics: ServableMetrics
    labels: Labels  # the outputs' class labels (model_store/labels.py), for classification

    @property
    def accepting(self) -> bool:
        """Whether ``submit`` takes requests: started and not stopping."""
        raise NotImplementedError

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a kernel now (for gauges and the fleet's load report, not the hot path)."""
        raise NotImplementedError

    @property
    def closes_in_background(self) -> bool:
        """Whether a retirement should not wait for ``close`` (model_store/retiring.py): a sequence model whose
        live sequences finish first. Those sequences' requests still come here (``holds_sequence``)."""
        return False

    def holds_sequence(self, sequence_id: Hashable) -> bool:
        """Whether sequence ``sequence_id`` is live on this version (a sequence model's, server/sequences.py)."""
        return False

    @property
    def priority_levels(self) -> int | None:
        """The priority levels ``submit`` takes (1..levels, 0 the default); None: any (an ensemble passes the
        request's priority on to its steps, each read in its own model's levels)."""
        raise NotImplementedError

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, key: tuple, deadline: float | None, trace: Any = None,
        priority: int = 0, timeout_us: int = 0, request_id: str = "",
        sequence: "tuple[Hashable, bool, bool] | None" = None,
    ) -> "asyncio.Future[dict[str, np.ndarray]]":
        """Queue one validated request (server/validation.py's feeds, rows and merge key); its outputs by name.
        ``request_id``: the request's id, which an ensemble passes on to its steps. ``sequence``: the request's
        (sequence_id, sequence_start, sequence_end), which a sequence model needs and others refuse."""
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        """Shutdown: dispatch what is queued without waiting for batches to fill; still accepting."""
        raise NotImplementedError

    async def cut(self, reason: str) -> None:
        """Shutdown, as its drain timeout ends: what is queued or running fails now (UNAVAILABLE, ``reason``)."""
        raise NotImplementedError

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Finish what is queued and running, then release what the version holds."""
        raise NotImplementedError

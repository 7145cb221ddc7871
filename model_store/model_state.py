"""The records the registry keeps per model: its versions' states and servables (model_store/registry.py).

Loop-bound, like the registry. Must not import server, batching or grpc.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


class Closable(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=Closable)


@dataclass(frozen=True)
class VersionStatus:
    state: ModelState
    reason: str = ""


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str  # "" for a model with no version loaded
    state: ModelState
    reason: str


class ModelRecord(Generic[S]):
    """One model's versions as the registry holds them."""

    def __init__(self) -> None:
        self.servables: dict[int, S] = {}  # READY versions only
        self.latest: S | None = None
        self.status: dict[int, VersionStatus] = {}
        self.fingerprints: dict[int, object] = {}
        self.reason = ""  # a model-level failure (bad config, no version to serve), when no version could be tried
        self.reason_fingerprint: object = None  # the repository files that failed so: polls retry once they change
        self.unselected: frozenset[int] = frozenset()  # versions in the repository that the policy (or pin) leaves out
        self.selection = ""  # what chose the versions served, for a request naming an unselected one
        self.lock = asyncio.Lock()
        self.origins: dict[int, Path] = {}  # each READY version's model folder: the repository's, or sent files'
        self.sent_folders: set[Path] = set()  # temporary folders of files sent with loads (model_store/sent_files.py)

    def publish(self) -> None:
        self.latest = self.servables[max(self.servables)] if self.servables else None

    def serves_fully(self) -> bool:
        """A version READY and none that failed to load with no earlier copy serving (UNAVAILABLE); versions
        loading beside a READY one, or leaving, do not count."""
        states = {status.state for status in self.status.values()}
        return ModelState.READY in states and ModelState.UNAVAILABLE not in states

    def version_list(self) -> str:
        """The versions with a state, for messages: "1, 2", or "none"."""
        return ", ".join(str(v) for v in sorted(self.status)) or "none"

    def why(self, version: int | None) -> str:
        """Why ``version`` (None: the model) does not serve, for messages."""
        if version is not None:
            status = self.status.get(version)
            return f"{status.state.value}{': ' + status.reason if status and status.reason else ''}" if status else "unknown"
        if self.reason:
            return self.reason
        reasons = [f"version {v} {s.state.value}{': ' + s.reason if s.reason else ''}" for v, s in sorted(self.status.items())]
        return "; ".join(reasons) or "no version loaded"

"""The repository API of the dataplane: the index, and explicit loads and unloads (``DataPlane`` inherits it).

Transport-neutral, as server/dataplane.py: fleetserve's own types in, ``ServingError`` out. ``ControlMode``
says which changes the server takes: none after start-up, the repository's own (polled), or explicit
RepositoryModelLoad/Unload requests.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Mapping

from model_store.registry import IndexEntry, ModelRegistry
from model_store.sent_files import read_files
from ops.errors import InvalidInput, Unsupported
from server.ensemble import unload
from server.served import ServedVersion

if TYPE_CHECKING:
    from model_store.routing import TrafficRouter


class ControlMode(enum.Enum):
    NONE = "none"  # load everything at start-up; the repository is not watched
    POLL = "poll"  # re-scan the repository at an interval
    EXPLICIT = "explicit"  # only RepositoryModelLoad/Unload change what is served


class RepositoryControl:
    """See the module docstring; the dataplane sets these attributes."""

    registry: ModelRegistry[ServedVersion]
    control_mode: ControlMode
    _router: "TrafficRouter | None"  # fleet mode: a load may not override what the fleet serves

    def repository_index(self, ready_only: bool = False, repository: str = "") -> list[IndexEntry]:
        """``repository``: the one the request names (gRPC's ``repository_name``, REST's
        ``/v2/repository/{repository}/…``), refused as Triton refuses it: never answered for the one served."""
        one_repository(repository)
        entries = self.registry.index()
        if ready_only:
            entries = [e for e in entries if e.state.value == "READY"]
        return entries

    async def load_model(self, name: str, parameters: Mapping[str, object] | None = None, repository: str = "") -> None:
        """``parameters``: the request's parameters by name, as plain values (str, int, bool, bytes).

        ``config`` (a string: the model configuration as JSON, in the form ``model_config`` returns) loads the
        model with that configuration instead of its config.pbtxt, until a load without it; the registry parses
        and checks it (model_store/override.py). ``file:<path>`` (bytes, with ``config``): the model's folder for
        this load (model_store/sent_files.py). Refused, never ignored, in fleet mode, where they would change this
        replica only. ``repository``: as for ``repository_index``."""
        one_repository(repository)
        self._check_explicit("load")
        parameters = parameters or {}
        files = read_files(name, parameters)
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidInput(f"model '{name}': the load request's parameter 'config' must be a string holding the "
                               f"model configuration as JSON, got {type(config).__name__}")
        if config is not None and self._router is not None:
            raise Unsupported(
                f"model '{name}': a config override{' with model files' if files else ''} is not supported in fleet "
                "mode: it would change this replica only, and the fleet's replicas would serve one model "
                "differently; change the model repository instead"
            )
        await self.registry.load(name, retry=True, config=config, files=files)  # explicit: what failed is tried again

    async def unload_model(self, name: str, repository: str = "", dependents: bool = False) -> None:
        """``dependents`` (Triton's ``unload_dependents``): an ensemble's composing models go too (server/ensemble.py)."""
        one_repository(repository)
        self._check_explicit("unload")
        await unload(self.registry, name, dependents)

    def _check_explicit(self, verb: str) -> None:
        if self.control_mode is not ControlMode.EXPLICIT:
            raise Unsupported(
                f"explicit model {verb} is not allowed: the server runs with --model-control-mode "
                f"{self.control_mode.value}; start it with --model-control-mode explicit"
            )


def one_repository(repository: str) -> None:
    if repository:
        raise Unsupported(
            f"model repository '{repository}': naming a repository is not supported; this server serves the one "
            "given by --model-repository: send the request without a repository name"
        )

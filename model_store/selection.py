"""Which versions of a model to serve, and why, in words: the version policy, or a fleet's pin.

Pure functions over a ``ModelSource`` and the versions a fleet pinned (model_store/reconcile.py), for
the registry (model_store/registry.py). Imports model_store.repository only; must not import server,
batching, kernels or grpc.
"""

from __future__ import annotations

from model_store.repository import ModelSource


def wanted(source: ModelSource, pinned: frozenset[int] | None) -> set[int]:
    """The versions of ``source`` to serve: those ``pinned`` that the repository has, else the policy's."""
    present = sorted(set(source.versions) | set(source.missing))
    if pinned is not None:
        return {v for v in present if v in pinned}
    return set(source.version_policy().select(present))


def describe(source: ModelSource, pinned: frozenset[int] | None) -> str:
    """What chooses the versions of ``source`` to serve: the fleet's pin, else the version policy."""
    if pinned is not None:
        return f"this server is pinned to versions {sorted(pinned)} (a fleet rollout)"
    stated = source.config_message is not None and source.config_message.HasField("version_policy")
    return f"its version_policy is {source.version_policy().describe()}{'' if stated else ' (the default)'}"


def nothing_to_serve(source: ModelSource, pinned: frozenset[int] | None) -> str:
    """Why no version of ``source`` is selected: no version folders, or none the policy (or pin) names."""
    present = sorted(set(source.versions) | set(source.missing))
    if not present:
        filename = source.config_message.default_model_filename if source.config_message else ""
        return (f"{source.path} has no version folders: each version is a folder named by a positive integer "
                f"(1, 2, ...; not 0 or 01) holding {filename or 'model.onnx'}")
    if pinned is not None:
        chosen = f"this server is pinned to versions {sorted(pinned)} (a fleet rollout)"
    else:
        chosen = f"version_policy selects versions {list(source.version_policy().versions)}"
    return f"{chosen}, but the repository has versions {present} only"

"""Traffic splits between the versions of a model, and the router the dataplane asks on every request.

A split gives each version a share in basis points (1/100 of a percent); the shares sum to 10,000.
The router turns a split into a table of 10,000 buckets, so choosing a version is one hash and one
list index. A request with an id always lands in the same bucket (CRC-32 of the id: the same in
every process and on every replica), so a retry with the same id is served by the same version
while the split holds; a request without an id gets a random bucket.

Pure and loop-bound; imports nothing but the standard library.
"""

from __future__ import annotations

import math
import random
import zlib
from typing import Mapping, Sequence

BUCKETS = 10_000  # basis points: a canary may take as little as 0.01% of the traffic
Split = tuple[tuple[int, int], ...]  # ((version, basis points), ...), ascending versions, summing to BUCKETS


def make_split(shares: dict[int, float]) -> Split:
    """A split from percentages by version (each in (0, 100], summing to 100). Raises ValueError."""
    if not shares:
        raise ValueError("a split needs at least one version")
    for version, share in shares.items():
        if not math.isfinite(share):  # round() would raise OverflowError for inf, ValueError naming no version for nan
            raise ValueError(f"version {version}: a share of {share:g}% is outside (0, 100] (resolution 0.01%)")
    points = {v: round(p * 100) for v, p in shares.items()}
    for version, share in shares.items():
        if version < 0:
            raise ValueError(f"version {version} is not a version number")
        if not 0 < points[version] <= BUCKETS:
            raise ValueError(f"version {version}: a share of {share:g}% is outside (0, 100] (resolution 0.01%)")
    if sum(points.values()) != BUCKETS:
        raise ValueError(f"the shares add up to {sum(points.values()) / 100:g}%, not 100%")
    return tuple(sorted(points.items()))


def check_split(split: Sequence[Sequence[int]]) -> Split:
    """A split read from outside (JSON): validated and normalised. Raises ValueError."""
    pairs = tuple((int(v), int(p)) for v, p in split)
    if pairs and (sum(p for _, p in pairs) != BUCKETS or any(p <= 0 for _, p in pairs)
                  or len({v for v, _ in pairs}) != len(pairs)):
        raise ValueError(f"not a split of {BUCKETS} basis points over distinct versions: {list(pairs)}")
    return tuple(sorted(pairs))


def describe_split(split: Split) -> str:
    """``v1 90% · v2 10%``; empty: the version policy decides."""
    if not split:
        return "version policy"
    return " · ".join(f"v{v} {p / 100:g}%" for v, p in split)


def bucket_of(request_id: str) -> int:
    """The bucket of a request id: stable across processes and replicas."""
    return zlib.crc32(request_id.encode("utf-8", "surrogatepass")) % BUCKETS


def routing_key(request_id: str, parameters: Mapping[str, object] | None) -> str:
    """What a request's bucket is a function of: its id, or for a request of a sequence (Triton's ``sequence_id``
    parameter) its sequence, so that every request of a sequence reaches the version holding its state."""
    sequence = parameters.get("sequence_id") if parameters else None
    return f"sequence {sequence!r}" if sequence not in (None, 0, "") else request_id


class TrafficRouter:
    """Per model, which version serves a request that names none. See the module docstring.

    ``set`` and ``clear`` are called by the reconciler only for versions that are loaded and
    ready; ``version_for`` is the hot path: one dict read, and for a split one hash."""

    def __init__(self) -> None:
        self._tables: dict[str, tuple[str, ...]] = {}
        self._splits: dict[str, Split] = {}

    def set(self, model: str, split: Split) -> None:
        table: list[str] = []
        for version, points in split:
            table.extend([str(version)] * points)
        if len(split) == 1:
            table = table[:1]  # one version: no hashing needed
        elif len(table) != BUCKETS:
            raise ValueError(f"model '{model}': a split must cover {BUCKETS} buckets, got {len(table)}")
        self._tables[model] = tuple(table)
        self._splits[model] = split

    def clear(self, model: str) -> None:
        """Requests without a version go to the latest ready version again (the version policy)."""
        self._tables.pop(model, None)
        self._splits.pop(model, None)

    def split(self, model: str) -> Split:
        """The split in force for ``model``; () when the router leaves it to the version policy."""
        return self._splits.get(model, ())

    def version_for(self, model: str, request_id: str) -> str:
        """The version to serve, as the registry takes it; "" for the latest ready version."""
        table = self._tables.get(model)
        if table is None:
            return ""
        if len(table) == 1:
            return table[0]
        return table[bucket_of(request_id) if request_id else random.randrange(BUCKETS)]

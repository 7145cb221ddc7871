"""Triton's system shared-memory extension: regions a co-located client registers, and tensors in them.

A client creates a POSIX shared-memory object (``shm_open(key)``, so a file in ``/dev/shm``), then
registers a *region* of it under a name: (key, offset, byte_size). An inference request then names
the region in an input's or a requested output's parameters (``shared_memory_region``,
``shared_memory_byte_size``, optional ``shared_memory_offset``, relative to the region): the input's
bytes are read from there, and the output's bytes are written there instead of into the response.
Tensors keep their wire form (raw little-endian values; BYTES as 4-byte little-endian lengths, each
followed by its bytes).

``SharedMemoryRegistry`` holds the regions, one per server, shared by both transports. Keys are POSIX
shared-memory names only (an optional leading '/', then at least one character, none of them '/' or
NUL, and not '.' or '..'), opened without following links, and must be regular files large enough:
a client can make the server read or write nothing but a shared-memory object.

Reads and writes go through the object's file descriptor (``pread``, ``pwrite``), not a mapping: a
client that shrinks its object while it is registered (``ftruncate``) then gets an error naming the
region, where reading a mapping past the object's new end would kill the server (SIGBUS). An input is
thus copied once, out of the region into its own buffer, as it is decoded; an output is written as
its response is encoded.

Lifetime: unregistering removes the name at once (new requests naming it get NOT_FOUND) and closes
the object's descriptor, so the server keeps neither the object nor its memory past its region. A
request decoded before that has its inputs already (copied); an output it was to write there fails
NOT_FOUND, saying the region was unregistered while it ran (Triton leaves that case undefined).
Shutdown unregisters every region (``close``).

Transport-free: imports neither grpc nor aiohttp nor protobuf. Loop-bound, not thread-safe. Errors are
``InvalidInput``, ``RegionNotFound`` (NOT_FOUND) or ``AlreadyExists`` (ALREADY_EXISTS).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from model_store.datatypes import Datatype
from ops.errors import AlreadyExists, InvalidInput, RegionNotFound
from server.codec import element_count, from_raw

if TYPE_CHECKING:
    from model_store.config import TensorSpec

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared-memory objects: shm_open("/k") opens /dev/shm/k
_NAME_MAX = 255  # the longest file name
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


def shm_path(key: str) -> str:
    """The file of the POSIX shared-memory object ``key``; InvalidInput for a key that is not such a name."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or "\x00" in name or name in (".", "..") or len(name.encode()) > _NAME_MAX:
        raise InvalidInput(
            f"key {key[:300]!r} is not a POSIX shared-memory name: give the name the client passed to "
            f"shm_open, an optional leading '/' followed by 1 to {_NAME_MAX} bytes with no '/' or NUL, "
            "not '.' or '..' (such as '/input_data')"
        )
    return os.path.join(SHM_DIR, name)


@dataclass(frozen=True, slots=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


class SharedObject:
    """An open shared-memory object. ``close`` (at unregistering) closes its descriptor at once, so the
    server never keeps a client's object, or its memory, past its region; ``fd`` is then -1, which the
    tensors still holding it check before each use (all on the event loop), so a descriptor number the
    process reuses is never written to."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class TensorRegion:
    """One tensor's place in a region, as a request named it; holds the object's descriptor open."""

    region: str
    offset: int  # within the region
    byte_size: int
    file: SharedObject  # opened at registration; closed when nothing holds it any more
    position: int  # the place's first byte in the object

    def read(self, what: str) -> bytes:
        """The place's bytes, copied out of the object."""
        data = os.pread(self._fd(what), self.byte_size, self.position)
        if len(data) < self.byte_size:
            raise self._shrunk(what, self.position + len(data))
        return data

    def write(self, output: str, raw: bytes) -> dict[str, Any]:
        """Write an output's raw contents at the start of its place; return the parameters its response
        entry carries. InvalidInput when they do not fit (the request ran; nothing is written)."""
        if len(raw) > self.byte_size:
            raise InvalidInput(
                f"output '{output}': its {len(raw)} bytes do not fit in the {self.byte_size} bytes given for it "
                f"in shared-memory region '{self.region}' (shared_memory_byte_size); give at least {len(raw)}"
            )
        fd = self._fd(f"output '{output}'")
        size = os.fstat(fd).st_size
        if self.position + len(raw) > size:  # a write past the end would grow the object, not fill the region
            raise self._shrunk(f"output '{output}'", size)
        os.pwrite(fd, raw, self.position)
        params: dict[str, Any] = {REGION: self.region, BYTE_SIZE: len(raw)}
        if self.offset:
            params[OFFSET] = self.offset
        return params

    def _fd(self, what: str) -> int:
        fd = self.file.fd
        if fd < 0:
            raise RegionNotFound(f"{what}: shared-memory region '{self.region}' was unregistered while the request "
                                 "ran; nothing was written to it")
        return fd

    def _shrunk(self, what: str, size: int) -> InvalidInput:
        return InvalidInput(
            f"{what}: shared-memory region '{self.region}' is no longer all there: its object now ends at byte "
            f"{size}, before the tensor's place ends (byte {self.position + self.byte_size}); it was made smaller "
            "after it was registered: unregister the region and register it again at its new size"
        )


class _Region:
    """A registered region: its object, open, and where the region starts in it."""

    __slots__ = ("status", "file")

    def __init__(self, status: RegionStatus, file: SharedObject) -> None:
        self.status = status
        self.file = file

    def tensor(self, what: str, offset: int, byte_size: int) -> TensorRegion:
        size, name = self.status.byte_size, self.status.name
        if offset >= size or byte_size > size - offset:
            raise InvalidInput(
                f"{what}: shared_memory_offset {offset} and shared_memory_byte_size {byte_size} run past the end "
                f"of shared-memory region '{name}', which holds {size} bytes"
            )
        return TensorRegion(name, offset, byte_size, self.file, self.status.offset + offset)


class SharedMemoryRegistry:
    """The system shared-memory regions registered with this server, by name. See the module docstring."""

    def __init__(self) -> None:
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes of ``key``'s object from ``offset`` under ``name``."""
        if not name:
            raise InvalidInput("a shared-memory region needs a name: the name inference requests will give it")
        known = self._regions.get(name)
        if known is not None:
            s = known.status
            raise AlreadyExists(
                f"shared-memory region '{name}' is already registered (key '{s.key}', offset {s.offset}, "
                f"{s.byte_size} bytes); unregister it first, or register under another name"
            )
        path = shm_path(key)
        if byte_size < 1 or offset < 0:
            raise InvalidInput(f"shared-memory region '{name}': byte_size must be at least 1 and offset at least 0, "
                               f"got byte_size {byte_size} and offset {offset}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            reason = "no such object: create it first (shm_open)" if exc.errno == 2 else exc.strerror
            raise InvalidInput(f"shared-memory region '{name}': cannot open key '{key}' ({reason})") from None
        file = SharedObject(fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"shared-memory region '{name}': key '{key}' is not a shared-memory object")
            if offset + byte_size > info.st_size:
                raise InvalidInput(
                    f"shared-memory region '{name}': offset {offset} + byte_size {byte_size} runs past the end of "
                    f"key '{key}', which holds {info.st_size} bytes"
                )
        except BaseException:
            file.close()
            raise
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), file)

    def unregister(self, name: str = "") -> None:
        """Forget ``name`` (every region when ""); a name that is not registered is no error, as in Triton."""
        names = [name] if name else list(self._regions)
        for n in names:
            region = self._regions.pop(n, None)
            if region is not None:
                region.file.close()

    def close(self) -> None:
        """Shutdown: unregister every region."""
        self.unregister()

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every region's status, or ``name``'s alone (RegionNotFound when it is not registered)."""
        if not name:
            return [r.status for r in self._regions.values()]
        return [self._get(name).status]

    def _get(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(
                f"no system shared-memory region named '{name}' is registered; register it first "
                "(CUDA shared memory is not supported by this server)"
            )
        return region

    def tensor(self, what: str, params: Mapping[str, Any]) -> TensorRegion:
        """Where a tensor's parameters put it (``what``: "input 'x'" or "output 'y'")."""
        name = params[REGION]
        if not isinstance(name, str):
            raise InvalidInput(f"{what}: parameter '{REGION}' must be a string, the name of a registered region")
        if BYTE_SIZE not in params:
            raise InvalidInput(f"{what}: parameter '{REGION}' needs '{BYTE_SIZE}', the tensor's size in bytes")
        return self._get(name).tensor(what, _count(what, params, OFFSET), _count(what, params, BYTE_SIZE))


def _count(what: str, params: Mapping[str, Any], key: str) -> int:
    value = params.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what}: parameter '{key}' must be an integer >= 0, got {value!r}")
    return value


def read_input(registry: SharedMemoryRegistry, name: str, params: Mapping[str, Any], dt: Datatype,
               shape: tuple[int, ...]) -> np.ndarray:
    """An input read from the region its parameters name, copied out of it."""
    place = registry.tensor(f"input '{name}'", params)
    if dt.itemsize:
        count = element_count(shape)
        if place.byte_size != count * dt.itemsize:
            raise InvalidInput(
                f"input '{name}': shared_memory_byte_size is {place.byte_size}, but shape {list(shape)} of {dt.name} "
                f"needs {count * dt.itemsize} bytes ({count} elements x {dt.itemsize} bytes)"
            )
    return from_raw(name, place.read(f"input '{name}'"), dt, shape)


def check_output_regions(specs: Sequence["TensorSpec"], regions: Mapping[str, TensorRegion], rows: int | None) -> None:
    """InvalidInput, before the request queues, for an output of fixed size whose place is too small.

    ``rows``: the request's batch size when the model batches, else None. Outputs with a variable
    dimension, and BYTES outputs, are checked when written (``TensorRegion.write``)."""
    for spec in specs:
        place = regions.get(spec.name)
        if place is None or not spec.datatype.itemsize or -1 in spec.dims:
            continue
        shape = spec.dims if rows is None else (rows, *spec.dims)
        need = math.prod(shape) * spec.datatype.itemsize
        if need > place.byte_size:
            raise InvalidInput(
                f"output '{spec.name}': shape {list(shape)} of {spec.datatype.name} needs {need} bytes, but "
                f"shared_memory_byte_size gives it {place.byte_size} in shared-memory region '{place.region}'"
            )

"""Model files sent with a load request (Triton's ``file:<path>`` load parameters).

An explicit load may carry the model's files: ``parameters["file:1/model.onnx"]`` holds that file's bytes
(the transports decode them: gRPC's ``bytes_param``, REST's base64 string). They make up the model's folder
for that load, in place of what the repository holds for it (the model need not be in the repository at
all); ``config`` must come with them, as in Triton, and is that load's configuration.

``read_files`` checks the parameters before anything is written. A path is relative to the model folder
and is either a file directly in it (a label file) or ``<version>/<file>`` (a version folder: a positive
whole number without leading zeros) or ``warmup/<file>``; nothing deeper, no absolute path, no empty
part, no ``.`` or ``..``, no hidden name, no NUL, control character or backslash, and no
``config.pbtxt`` (``config`` is the configuration). Triton refuses ``..``; the rest is stricter, because
the scanner would ignore any other file and a path must never leave its folder. The total size is bounded
by the transports' message limits (``--max-message-bytes``, ``--http-max-body-bytes``), so none is set here.

``write_folder`` writes them into a fresh private temporary folder (0700, under the system's temporary
folder) read by the same ``ModelRepository`` as the repository, so every rule of a model folder applies.
Blocking: call it in a worker thread. The registry removes the folder once no version loaded from it
serves (model_store/registry.py).

A server killed before its shutdown cannot remove its folders, so each folder holds a lock (an ``flock``
on its hidden ``.owner`` file, held by the process that wrote it while the folder lives; the kernel lets
go of it when that process ends, however it ends). ``remove_stale`` (at start-up) removes the folders
whose lock nobody holds: those of servers that ended, never those of a server still running, even one
in another container sharing the temporary folder (a lock is not a process id, which a container
numbers anew).

Imports model_store.repository, .override, .warmup and ops.errors; must not import server, batching, kernels or grpc.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from model_store.override import ConfigOverride
from model_store.repository import CONFIG_FILENAME, ModelRepository, name_problem
from model_store.warmup import WARMUP_FOLDER
from ops.errors import BackendError, InvalidInput

log = logging.getLogger(__name__)
FILE_PREFIX = "file:"
_VERSION = re.compile(r"[1-9][0-9]*")  # as the repository's version folders
FOLDER_PREFIX = "fleetserve-load-files-"  # the temporary folders' names start so
_serial = itertools.count(1)  # tells apart the files of two loads, whatever the file system reuses
OWNER_FILE = ".owner"  # in each folder: its lock (the module docstring)
_owned: dict[Path, int] = {}  # the folders this process wrote: their locked descriptors
_STALE_AFTER_S = 60.0  # a folder younger than this is never removed as stale


def read_files(model_name: str, parameters: Mapping[str, object]) -> dict[str, bytes] | None:
    """The files among a load's ``parameters``, by path in the model folder; None when there are none.

    Raises ``InvalidInput`` naming the parameter for a bad path, a value that is not bytes, or files
    without a ``config`` parameter.
    """
    files: dict[str, bytes] = {}
    for key, value in sorted(parameters.items()):
        if not key.startswith(FILE_PREFIX):
            continue
        path = key[len(FILE_PREFIX):]
        problem = path_problem(path)
        if problem:
            raise InvalidInput(f"model '{model_name}': load parameter {key!r}: {problem}; a model file's "
                               "parameter is 'file:<version>/<file name>' (such as 'file:1/model.onnx'), "
                               "'file:warmup/<file name>' or 'file:<file name>' for a file of the model folder")
        if not isinstance(value, bytes):
            raise InvalidInput(f"model '{model_name}': load parameter {key!r} must hold the file's content as "
                               f"bytes (a gRPC bytes_param, or a base64 string over REST), got {type(value).__name__}")
        files[path] = value
    if not files:
        return None
    if parameters.get("config") is None:
        raise InvalidInput(f"model '{model_name}': a load with model files ({', '.join(repr(FILE_PREFIX + p) for p in files)}) "
                           "needs the 'config' parameter too: the model configuration as JSON, which the files' "
                           "model folder is loaded with")
    clashing = sorted(p for p in files if "/" not in p and any(q.startswith(p + "/") for q in files))
    if clashing:
        raise InvalidInput(f"model '{model_name}': load parameter {FILE_PREFIX + clashing[0]!r} names a file "
                           "where other parameters need a folder of that name")
    return files


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a sent file's path in the model folder (see the module docstring), or None."""
    if not path:
        return "the path is empty"
    if path.startswith("/"):
        return "the path is absolute; give it relative to the model folder"
    parts = path.split("/")
    if any(part in ("..", ".") for part in parts):
        return "the path may not contain '..' or '.'"
    if "" in parts:
        return "the path has an empty part (a doubled or trailing '/')"
    for part in parts:
        problem = name_problem(part)
        if problem:
            return f"{part!r} cannot be a file or folder name: {problem}"
    if len(parts) > 2:
        return "the path is too deep: files go directly in a version folder, in warmup/ or in the model folder"
    if len(parts) == 2 and not (_VERSION.fullmatch(parts[0]) or parts[0] == WARMUP_FOLDER):
        return (f"{parts[0]!r} is not a version folder (a positive whole number without leading zeros, "
                f"such as 1) nor {WARMUP_FOLDER}/")
    if parts == [CONFIG_FILENAME]:
        return f"{CONFIG_FILENAME} is not sent as a file: the 'config' parameter is the model configuration"
    return None


def write_folder(model_name: str, files: Mapping[str, bytes]) -> ModelRepository:
    """Write ``files`` (checked by ``read_files``) as model ``model_name``'s folder in a new private temporary
    folder; returns a repository rooted there. Blocking. Raises ``BackendError`` when they cannot be written
    (the folder is then removed)."""
    root = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{next(_serial)}-"))  # mode 0700: this user's only
    try:
        _own(root)
        model_dir = root / model_name
        for path, content in files.items():
            target = model_dir / path
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(content)
        model_dir.mkdir(mode=0o700, exist_ok=True)  # files of the model folder only: it still loads (and fails)
    except OSError as exc:
        remove_folder(root)
        raise BackendError(f"model '{model_name}': the files sent with the load cannot be written to a "
                           f"temporary folder: {exc.strerror or exc}", model=model_name) from exc
    return ModelRepository(root)


async def write_folder_off_loop(model_name: str, files: Mapping[str, bytes],
                                override: ConfigOverride | None) -> tuple[ModelRepository, ConfigOverride]:
    """``write_folder`` in a worker thread, and ``override`` stamped as that folder's (``stamp_name``): each
    version loads anew from it. A caller cancelled meanwhile leaves no folder behind. Files come with a
    config (as ``read_files`` checks): InvalidInput without one."""
    if override is None:
        raise InvalidInput(f"model '{model_name}': a load with model files needs the 'config' parameter too")
    written = asyncio.get_running_loop().run_in_executor(None, write_folder, model_name, files)
    try:
        repository = await asyncio.shield(written)
        return repository, replace(override, stamp=(stamp_name(repository), *override.stamp[1:]))
    except asyncio.CancelledError:
        written.add_done_callback(lambda done: None if done.cancelled() or done.exception() else
                                  asyncio.get_running_loop().run_in_executor(None, remove_folder, done.result().root))
        raise


def stamp_name(repository: ModelRepository) -> str:
    """What stands for config.pbtxt's name in the fingerprints of a load from ``repository``'s sent files:
    unique to that load, so each of its versions loads anew."""
    return f"<config override with the files in {repository.root}>"


async def remove_unused(folders: set[Path], in_use: Iterable[Path]) -> None:
    """Remove each of ``folders`` (made by ``write_folder``) in which none of ``in_use`` (the model folders
    of the versions serving) lies, and drop it from ``folders``; in a worker thread."""
    for root in folders - {folder.parent for folder in in_use}:
        folders.discard(root)
        await asyncio.to_thread(remove_folder, root)


def remove_folder(root: Path) -> None:
    """Remove a folder ``write_folder`` made, and all in it, and let go of its lock. Blocking; never raises."""
    shutil.rmtree(root, ignore_errors=True)
    descriptor = _owned.pop(root, None)
    if descriptor is not None:
        os.close(descriptor)


def _own(root: Path) -> None:
    """Take ``root``'s lock for this process, for as long as the folder lives."""
    descriptor = os.open(root / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
    _owned[root] = descriptor


def remove_stale(parent: Path | None = None) -> list[Path]:
    """Remove the folders of sent files under ``parent`` (the system's temporary folder) that no running process
    owns (the module docstring); returns them. Blocking; never raises. A folder made in the last minute, or without
    a lock file (one being made this moment), is left alone: its maker may not hold the lock yet."""
    removed = []
    folder = Path(parent or tempfile.gettempdir())
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(FOLDER_PREFIX)]
    except OSError:
        return []
    for entry in entries:
        root = Path(entry.path)
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            descriptor = os.open(root / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(descriptor).st_mtime < _STALE_AFTER_S:
                continue  # just made: its maker may not hold the lock yet
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its server runs
            continue
        else:
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
        finally:
            os.close(descriptor)
    if removed:
        log.info("removed %d temporary folder(s) of model files sent with loads, left by servers that ended without "
                 "their shutdown: %s", len(removed), ", ".join(str(r) for r in removed))
    return removed

"""Remote model repositories: a local mirror of an ``s3://`` or ``http(s)://`` repository.

The registry only ever reads a local folder (model_store/repository.py). ``RepositoryMirror``
keeps such a folder in step with a remote repository (model_store/remote_store.py lists,
downloads and verifies the files); ``MirroredRepository`` reads that folder and adds, as
reasons, what the last sync could not download.

Layout of the mirror (``RepositoryMirror.root``, one folder per repository URL in the cache)::

    <root>/<model>                 -> .snapshots/<model>/<n>   a link, replaced atomically
    <root>/.snapshots/<model>/<n>/ one complete copy of the model (config.pbtxt, versions) and
                                   .fleetserve-mirror.json (what each file was remotely)
    <root>/.staging/               snapshots being built
    <root>/.lock                   held during a sync: processes sharing a cache take turns

A sync lists the remote files; for each model whose files changed it builds a new snapshot in
.staging: unchanged files are hard links to the current snapshot's (same inode, so the
registry's fingerprint sees no change and does not reload them), changed or new files are
downloaded and verified. The finished snapshot is renamed into .snapshots and the model's link
replaced in one rename: a reader sees the old model or the new one, whole, never a
half-written file. A version whose files fail keeps its previous copy when it had one, and is
otherwise left out and reported, so the registry shows it UNAVAILABLE with the reason; a
failed model-level file (config.pbtxt) keeps the whole previous snapshot. A model gone from
the remote loses its link (in poll mode the registry then unloads it). The current and the
previous snapshot of each model are kept, older ones deleted. ModelRepository ignores hidden
entries, which is why the bookkeeping lives in them.

``python -m model_store.remote index DIR`` writes the ``index.json`` an HTTP(S) repository
publishes. Blocking: ``sync`` runs in a worker thread; ``failures`` may be read from any
thread (it is replaced whole). Must not import server, batching, kernels or a transport.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from model_store.override import ConfigOverride
from model_store.remote_store import RemoteFile, RemoteStore, RemoteStoreError, check_url, write_index
from model_store.repository import ModelRepository, ModelSource
from ops.errors import ModelNotReady

log = logging.getLogger(__name__)

MANIFEST_FILENAME = ".fleetserve-mirror.json"
_SNAPSHOTS = ".snapshots"
_STAGING = ".staging"
_VERSION = re.compile(r"[1-9][0-9]*")  # as model_store.repository: "0" and "01" are no version folders


@dataclass(frozen=True)
class MirrorConfig:
    """Where the remote repository is and where its local mirror goes. Raises ValueError when invalid."""

    url: str
    cache_dir: Path
    s3_endpoint_url: str | None = None  # an S3-compatible server instead of AWS

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", check_url(self.url))
        if self.s3_endpoint_url is not None:
            if not self.url.startswith("s3://"):
                raise ValueError("--s3-endpoint-url applies to s3:// model repositories only")
            if urlsplit(self.s3_endpoint_url).scheme not in ("http", "https"):
                raise ValueError(f"--s3-endpoint-url must be an http(s):// URL, got {self.s3_endpoint_url!r}")

    @property
    def root(self) -> Path:
        """The mirror's folder: one per URL, named so that a person can tell which."""
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]  # never user:password in a folder name
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{host}{parts.path}").strip("_.")[:60]
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:12]
        return self.cache_dir / f"{slug}-{digest}"


@dataclass(frozen=True)
class ModelFailure:
    """What the last sync could not download for one model."""

    reason: str = ""  # a model-level file failed: the previous copy, if any, stays in use
    versions: Mapping[int, str] = field(default_factory=dict)  # versions with no usable copy, and why


@dataclass(frozen=True)
class SyncReport:
    downloaded: tuple[str, ...]  # repository-relative paths fetched
    bytes_downloaded: int
    updated: tuple[str, ...]  # models whose snapshot was replaced
    removed: tuple[str, ...]  # models gone from the remote
    failures: Mapping[str, ModelFailure]


class RepositoryMirror:
    """Keeps ``config.root`` a verified copy of the remote repository; see the module docstring.

    ``__init__`` does no I/O. ``sync`` is blocking and not reentrant (one caller at a time per
    object; several processes may share a cache folder). ``close`` makes a running sync stop
    before its next file.
    """

    def __init__(self, config: MirrorConfig, store: RemoteStore | None = None) -> None:
        self.config = config
        self.root = config.root
        self.failures: Mapping[str, ModelFailure] = {}
        self._store = store or RemoteStore(config.url, s3_endpoint_url=config.s3_endpoint_url)
        self._closing = threading.Event()

    def has_copy(self) -> bool:
        """Whether an earlier sync left models to serve (e.g. when the store is unreachable now)."""
        try:
            return any(p.is_symlink() for p in self.root.iterdir() if not p.name.startswith("."))
        except OSError:
            return False

    def close(self) -> None:
        self._closing.set()

    def sync(self) -> SyncReport:
        """Bring the mirror in step with the remote repository.

        Raises ``RemoteStoreError`` when the repository cannot be listed (the mirror is
        then left as it was); per-file failures are reported in the result and in
        ``failures``, not raised.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / ".lock"):
            listing = self._store.list_files()
            by_model: dict[str, dict[str, RemoteFile]] = {}
            for path, file in listing.items():
                model, _, rel = path.partition("/")
                by_model.setdefault(model, {})[rel] = file
            staging = self.root / _STAGING
            shutil.rmtree(staging, ignore_errors=True)  # left by a process that died mid-sync
            staging.mkdir()
            downloaded: list[RemoteFile] = []
            updated: list[str] = []
            failures: dict[str, ModelFailure] = {}
            for name, files in sorted(by_model.items()):
                if self._closing.is_set():
                    raise RemoteStoreError("repository sync stopped: the server is shutting down")
                failure, fetched, changed = self._sync_model(name, files, staging)
                downloaded.extend(fetched)
                if changed:
                    updated.append(name)
                if failure.reason or failure.versions:
                    failures[name] = failure
            removed = self._remove_models_not_in(set(by_model))
            shutil.rmtree(staging, ignore_errors=True)
        self.failures = failures
        report = SyncReport(
            tuple(f.path for f in downloaded), sum(f.size for f in downloaded), tuple(updated), tuple(removed), failures
        )
        if downloaded or removed:
            log.info("model repository %s: downloaded %d files (%d bytes), updated %s, removed %s",
                     self.config.url, len(downloaded), report.bytes_downloaded, updated or "none", removed or "none")
        return report

    # ---- one model --------------------------------------------------------------------------
    def _sync_model(
        self, name: str, files: dict[str, RemoteFile], staging: Path
    ) -> tuple[ModelFailure, list[RemoteFile], bool]:
        current = self._current(name)
        old = _read_manifest(current)
        wanted = {rel: list(f.identity) for rel, f in files.items()}
        if current is not None and old == wanted:
            return ModelFailure(), [], False
        build = staging / name
        build.mkdir()
        manifest: dict[str, list[object]] = {}
        failed: dict[int | None, str] = {}  # version (None: the model's own files) -> first failure
        fetched: list[RemoteFile] = []
        for rel, file in sorted(files.items()):
            group = _version_of(rel)
            if group in failed:
                continue  # the version is failing anyway: don't fetch the rest of it
            target = build / rel
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError:  # the listing has "m/1" as a file and "m/1/model.onnx": one of them cannot be
                failed[group] = f"{self._store.location(f'{name}/{rel}')}: a folder of its path is listed as a file"
                log.error("model '%s': %s", name, failed[group])
                continue
            if current is not None and old.get(rel) == wanted[rel] and _size(current / rel) == file.size:
                _link_or_copy(current / rel, target)
            else:
                try:
                    self._store.download(file, target)
                except RemoteStoreError as exc:
                    failed[group] = exc.message
                    log.error("model '%s': %s", name, exc.message)
                    continue
                fetched.append(file)
            manifest[rel] = wanted[rel]
        if None in failed:
            shutil.rmtree(build)
            kept = "; the previous copy stays in use" if current is not None else ""
            return ModelFailure(reason=failed[None] + kept), fetched, False
        missing: dict[int, str] = {}
        for version, reason in failed.items():
            assert version is not None
            prefix = f"{version}/"
            shutil.rmtree(build / str(version), ignore_errors=True)
            manifest = {rel: ident for rel, ident in manifest.items() if not rel.startswith(prefix)}
            previous = {rel: ident for rel, ident in old.items() if rel.startswith(prefix)}
            if current is not None and previous and all((current / rel).is_file() for rel in previous):
                for rel in previous:  # keep serving the last good copy of this version
                    (build / rel).parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(current / rel, build / rel)
                manifest.update(previous)
                log.warning("model '%s' version %d: keeping the previous copy: %s", name, version, reason)
            else:
                missing[version] = f"version {version} could not be downloaded: {reason}"
        failure = ModelFailure(versions=missing)
        if current is not None and manifest == old:
            shutil.rmtree(build)  # nothing new arrived (only failures): keep the current snapshot
            return failure, fetched, False
        (build / MANIFEST_FILENAME).write_text(json.dumps({"url": self.config.url, "files": manifest}))
        self._publish(name, build, current)
        return failure, fetched, True

    def _current(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        target = self.root / os.readlink(link)
        return target if target.is_dir() else None

    def _publish(self, name: str, build: Path, current: Path | None) -> None:
        folder = self.root / _SNAPSHOTS / name
        folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
        snapshot = folder / str(max(numbers, default=0) + 1)
        os.rename(build, snapshot)
        link = self.root / name
        if link.exists() and not link.is_symlink():
            raise RemoteStoreError(f"model mirror {self.root}: {link} is not a link made by fleetserve; remove it")
        tmp = self.root / _STAGING / f"{name}.link"
        os.symlink(os.path.relpath(snapshot, self.root), tmp)
        os.replace(tmp, link)  # the switch: one rename
        keep = {snapshot.name, current.name if current is not None else ""}
        for old in folder.iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def _remove_models_not_in(self, present: set[str]) -> list[str]:
        removed = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or entry.name in present:
                continue
            if entry.is_symlink():
                entry.unlink()
                removed.append(entry.name)
            shutil.rmtree(self.root / _SNAPSHOTS / entry.name, ignore_errors=True)
        return removed


class MirroredRepository(ModelRepository):
    """The mirror's folder read as a model repository, plus what its last sync could not download.

    A version that could not be downloaded, and has no earlier copy, is reported as a missing
    version with the download's reason (the registry shows it UNAVAILABLE); a model none of
    whose files arrived is listed, and reading it raises ``ModelNotReady`` with the reason.
    """

    def __init__(self, mirror: RepositoryMirror) -> None:
        super().__init__(mirror.root)
        self._mirror = mirror

    def model_names(self) -> list[str]:
        failed = {name for name, f in self._mirror.failures.items() if f.reason or f.versions}
        local = super().model_names() if self.root.is_dir() else []  # none before the first sync
        return sorted(set(local) | failed)

    def read(self, name: str, override: ConfigOverride | None = None) -> ModelSource:
        self.validate_name(name)
        failure = self._mirror.failures.get(name)
        if failure is not None and failure.reason and not (self.root / name).is_dir():
            raise ModelNotReady(f"model '{name}' could not be downloaded: {failure.reason}", model=name)
        source = super().read(name, override)
        if failure is None or not failure.versions:
            return source
        missing = dict(source.missing)
        for version, reason in failure.versions.items():
            if version not in source.versions:
                missing[version] = reason
        return dataclasses.replace(source, missing=missing)


def _version_of(rel: str) -> int | None:
    """The version folder a model-relative path lies in, or None for the model's own files."""
    head, sep, _ = rel.partition("/")
    return int(head) if sep and _VERSION.fullmatch(head) else None


def _read_manifest(snapshot: Path | None) -> dict[str, list[object]]:
    if snapshot is None:
        return {}
    try:
        files = json.loads((snapshot / MANIFEST_FILENAME).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # unreadable: everything is downloaded again
    return files if isinstance(files, dict) else {}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else -1
    except OSError:
        return -1


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links: a copy is slower but as good
        shutil.copy2(source, target)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_store.remote", description="remote model repository tools")
    sub = parser.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="write DIR/index.json, the file list an HTTP(S) repository publishes")
    index.add_argument("directory", type=Path, help="a model repository folder")
    args = parser.parse_args(argv)
    try:
        path = write_index(args.directory)
    except (OSError, ValueError, RemoteStoreError) as exc:
        parser.error(str(exc))
    count = len(json.loads(path.read_text())["files"])
    print(f"wrote {path}: {count} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

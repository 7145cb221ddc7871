"""A remote model repository as files: listing, downloading and verifying them, and the index format.

A remote repository is the same tree as a local one (``<model>/<version>/model.onnx``,
``<model>/config.pbtxt``) under a URL:

- ``s3://bucket/prefix``: any S3-compatible store (``endpoint_url`` overrides AWS);
  credentials come from the standard AWS sources (``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), read by botocore itself.
  Files are listed with their size and ETag.
- ``http://`` / ``https://host/path``: a plain web server cannot list a folder, so the
  repository publishes ``<url>/index.json`` (``write_index`` writes it; see
  ``INDEX_FORMAT``), listing every file with its size and sha256.

When ``index.json`` exists at an S3 prefix too, it is authoritative there as well: only
the files it lists are mirrored, and verified by sha256. Publishing the index last then
makes a new model version appear at once, never half-uploaded.

Verification of each downloaded file (``RemoteStore.download``): the size always; the
sha256 when an index gives it; else, on S3, the MD5 when the ETag is a plain MD5 (a
single-part upload not encrypted with SSE-KMS or SSE-C, which is checked with a HEAD
when the digest differs). Multipart ETags carry no whole-file digest: such files are
checked by size only, unless an index is published.

Access goes through fsspec (s3fs, aiohttp), imported when a store is first used, so
fleetserve without the ``remote`` extra still serves local repositories. Blocking: call
from a worker thread. Must not import server, batching, kernels or a transport.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ops.errors import Code, ServingError

log = logging.getLogger(__name__)

SCHEMES = ("s3", "http", "https")
INDEX_FILENAME = "index.json"
INDEX_FORMAT = "fleetserve-repository-index"
INDEX_VERSION = 1
_MD5 = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1 << 20
_NAME_MAX_BYTES = 255  # the longest file or folder name Linux file systems hold
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class RemoteStoreError(ServingError):
    """The remote repository cannot be read now, or a file failed verification (UNAVAILABLE)."""

    code = Code.UNAVAILABLE


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote repository. ``path`` is relative, '/'-separated: ``<model>/...``."""

    path: str
    size: int
    etag: str = ""  # the store's entity tag without quotes; "" when the listing gives none
    sha256: str = ""  # from index.json; "" when there is no index

    @property
    def identity(self) -> tuple[int, str, str]:
        """Equal identities mean equal content: what the mirror compares to skip a download."""
        return self.size, self.etag, self.sha256


def check_url(url: str) -> str:
    """``url`` without a trailing slash; raises ValueError when it is not a supported repository URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"model repository URL {url!r}: unsupported scheme {parts.scheme!r}; use s3://bucket/prefix, "
            "http(s)://host/path or a local folder"
        )
    if not parts.netloc:
        raise ValueError(f"model repository URL {url!r} names no {'bucket' if parts.scheme == 's3' else 'host'}")
    if parts.query or parts.fragment:
        raise ValueError(f"model repository URL {url!r}: a query or fragment is not allowed")
    return url.rstrip("/")


def relative_path(path: str, source: str) -> str | None:
    """``path`` checked as a repository-relative file path; None for a hidden one (skipped).

    Hidden files (any component starting with '.') are no part of a repository, as on disk.
    Raises ``RemoteStoreError`` for an absolute path, an empty component, a backslash or
    a NUL, so nothing outside the mirror can ever be written through a listed name; and for
    a path the mirror could not write, or a model folder no client could name: a control
    character, text that is not UTF-8 (an index may escape a lone surrogate), a component
    longer than a file name can be.
    """
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise RemoteStoreError(f"{source}: file path {path!r} is not a relative '/'-separated path")
    parts = path.split("/")
    if any(not part for part in parts):
        raise RemoteStoreError(f"{source}: file path {path!r} has an empty component")
    if any(part.startswith(".") for part in parts):
        return None
    if _CONTROL.search(path):
        raise RemoteStoreError(f"{source}: file path {path!r} contains a control character")
    try:
        longest = max(len(part.encode()) for part in parts)
    except UnicodeEncodeError:
        raise RemoteStoreError(f"{source}: file path {path!r} is not valid UTF-8") from None
    if longest > _NAME_MAX_BYTES:
        raise RemoteStoreError(
            f"{source}: file path {path!r} has a component of {longest} bytes; a file or folder name holds at most "
            f"{_NAME_MAX_BYTES}"
        )
    if len(parts) < 2:
        return None  # a file directly at the root (a README, the index itself) is no model's
    return path


def parse_index(data: bytes, source: str) -> dict[str, RemoteFile]:
    """The files an ``index.json`` lists, by path. Raises ``RemoteStoreError`` naming what is wrong."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RemoteStoreError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT or doc.get("version") != INDEX_VERSION:
        raise RemoteStoreError(
            f"{source}: not a fleetserve index (expected {{\"format\": \"{INDEX_FORMAT}\", "
            f"\"version\": {INDEX_VERSION}, \"files\": [...]}}); write one with python -m model_store.remote index DIR"
        )
    unknown = set(doc) - {"format", "version", "files"}
    if unknown or not isinstance(doc.get("files"), list):
        raise RemoteStoreError(f"{source}: unknown keys {sorted(unknown)} or no 'files' list")
    files: dict[str, RemoteFile] = {}
    for n, entry in enumerate(doc["files"]):
        where = f"{source}: files[{n}]"
        if not isinstance(entry, dict) or set(entry) != {"path", "size", "sha256"}:
            raise RemoteStoreError(f"{where}: expected exactly the keys path, size, sha256; got {entry!r}")
        path, size, digest = entry["path"], entry["size"], entry["sha256"]
        if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RemoteStoreError(f"{where}: path must be a string and size a non-negative integer")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise RemoteStoreError(f"{where}: sha256 must be 64 lowercase hex digits")
        checked = relative_path(path, where)
        if checked in files:
            raise RemoteStoreError(f"{where}: path {checked!r} is listed twice; list each file once")
        if checked is not None:
            files[checked] = RemoteFile(checked, size, sha256=digest)
    return files


def write_index(root: str | os.PathLike[str]) -> Path:
    """Write ``<root>/index.json`` listing every non-hidden file under ``root`` in a model folder.

    Run it on the folder before uploading it to a web server (``python -m model_store.remote
    index DIR``). Returns the path written.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"{base} is not a folder")
    entries = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            file = Path(dirpath) / name
            rel = file.relative_to(base).as_posix()
            if relative_path(rel, str(base)) is None:
                continue
            entries.append({"path": rel, "size": file.stat().st_size, "sha256": file_digests(file)[1]})
    target = base / INDEX_FILENAME
    doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "files": entries}
    target.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return target


def file_digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) hex digests of a local file."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


class RemoteStore:
    """Read access to the repository at ``url`` through fsspec. No I/O until called; blocking.

    One store may be used from one thread at a time.
    """

    def __init__(self, url: str, *, s3_endpoint_url: str | None = None) -> None:
        self.url = check_url(url)
        self.scheme = urlsplit(self.url).scheme
        self._s3_endpoint_url = s3_endpoint_url
        self._fs: Any = None

    def _filesystem(self) -> Any:
        if self._fs is None:
            try:
                import fsspec
            except ImportError as exc:  # pragma: no cover - the remote extra is part of dev
                raise RemoteStoreError(
                    f"reading {self.url} needs fsspec: pip install 'fleetserve[remote]'"
                ) from exc
            if self.scheme == "s3":
                # No listing cache: each sync must see what the bucket holds now.
                self._fs = fsspec.filesystem(
                    "s3", endpoint_url=self._s3_endpoint_url, skip_instance_cache=True, use_listings_cache=False
                )
            else:
                self._fs = fsspec.filesystem(self.scheme, skip_instance_cache=True)
        return self._fs

    def location(self, path: str) -> str:
        """The URL of repository file ``path``, for messages."""
        return f"{self.url}/{path}"

    def _remote(self, path: str) -> str:
        if self.scheme == "s3":
            return f"{self.url[len('s3://'):]}/{path}"
        return f"{self.url}/{quote(path)}"

    def list_files(self) -> dict[str, RemoteFile]:
        """Every file of the repository by relative path. Raises ``RemoteStoreError``."""
        fs = self._filesystem()
        index_url = self.location(INDEX_FILENAME)
        try:
            data = fs.cat_file(self._remote(INDEX_FILENAME))
        except FileNotFoundError:
            data = None
        except Exception as exc:
            raise RemoteStoreError(f"cannot read {index_url}: {_describe(exc)}") from exc
        if data is not None:
            return parse_index(data, index_url)
        if self.scheme != "s3":
            raise RemoteStoreError(
                f"{index_url} does not exist: an HTTP(S) repository publishes an index of its files; "
                "write it with python -m model_store.remote index DIR"
            )
        base = self._remote("").rstrip("/")
        try:
            found = fs.find(base, detail=True)  # an empty or missing prefix: {}, a repository with no models
        except Exception as exc:  # FileNotFoundError: no such bucket, never "no models" (that would unload all)
            raise RemoteStoreError(f"cannot list {self.url}: {_describe(exc)}") from exc
        files: dict[str, RemoteFile] = {}
        for key, info in found.items():
            if info.get("type") != "file" or not key.startswith(base + "/") or key.endswith("/"):
                continue  # folder markers ("dense/", as consoles create them) hold no file
            try:
                rel = relative_path(key[len(base) + 1:], self.url)
            except RemoteStoreError as exc:  # one stray key ("a//b") must not hide every model
                log.warning("%s; skipped", exc.message)
                continue
            if rel is not None:
                files[rel] = RemoteFile(rel, int(info["size"]), etag=str(info.get("ETag", "")).strip('"'))
        return files

    def download(self, file: RemoteFile, dest: Path) -> None:
        """Download ``file`` to ``dest`` and verify it; see the module docstring.

        Raises ``RemoteStoreError`` with a message naming the file, what was expected and
        what arrived; ``dest`` may then hold the bad bytes (the caller discards it).
        """
        where = self.location(file.path)
        listed_by = "the index" if file.sha256 else "the store's listing"
        try:
            if self.scheme == "s3":
                self._filesystem().get_file(self._remote(file.path), str(dest))
            elif self._fetch_at_most(file, dest) > file.size:
                raise RemoteStoreError(
                    f"{where}: size mismatch: {listed_by} says {file.size} bytes, the server sent more; the download "
                    "was stopped there and the file was not used"
                )
        except RemoteStoreError:
            raise
        except FileNotFoundError as exc:  # its text is the URL alone
            raise RemoteStoreError(
                f"cannot download {where}: not found (listed, but the server has no such file)"
            ) from exc
        except Exception as exc:
            raise RemoteStoreError(f"cannot download {where}: {_describe(exc)}") from exc
        size = dest.stat().st_size
        if size != file.size:
            raise RemoteStoreError(
                f"{where}: size mismatch: {listed_by} says {file.size} bytes, {size} were downloaded; "
                "the file was not used"
            )
        md5, sha = file_digests(dest)
        if file.sha256 and sha != file.sha256:
            raise RemoteStoreError(
                f"{where}: sha256 mismatch: the index says {file.sha256}, the download hashes to {sha}; "
                "the file was not used"
            )
        if not file.sha256 and _MD5.fullmatch(file.etag) and md5 != file.etag and not self._etag_not_md5(file):
            raise RemoteStoreError(
                f"{where}: MD5 mismatch: the ETag is {file.etag}, the download hashes to {md5}; the file was not used"
            )

    def _fetch_at_most(self, file: RemoteFile, dest: Path) -> int:
        """Stream ``file`` into ``dest``, stopping once more than the listed size arrived (an index that
        is wrong, or a file replaced by a huge one, must not fill the disk); the bytes received."""
        received = 0
        with self._filesystem().open(self._remote(file.path), "rb", block_size=0) as source, dest.open("wb") as out:
            while received <= file.size and (chunk := source.read(min(_CHUNK, file.size + 1 - received))):
                received += len(chunk)
                out.write(chunk)
        return received

    def _etag_not_md5(self, file: RemoteFile) -> bool:
        """Whether the object's ETag is legitimately not its MD5 (SSE-KMS, SSE-C). Raises when it changed."""
        bucket, _, key = self._remote(file.path).partition("/")
        try:
            head = self._filesystem().call_s3("head_object", Bucket=bucket, Key=key)
        except Exception as exc:
            raise RemoteStoreError(f"cannot check {self.location(file.path)}: {_describe(exc)}") from exc
        if str(head.get("ETag", "")).strip('"') != file.etag:
            raise RemoteStoreError(
                f"{self.location(file.path)} changed while it was downloaded; retrying at the next sync"
            )
        return head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or "SSECustomerAlgorithm" in head


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 400 else text[:400] + "..."

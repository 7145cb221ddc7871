"""The model repository on disk: which models and versions it holds, and their configs.

Layout, as Triton's::

    <root>/<model>/config.pbtxt            optional
    <root>/<model>/<version>/model.onnx    version: a folder named by a positive integer;
                                           the file name is config's default_model_filename

This is the *store*; what is loaded in memory is the registry's business
(model_store/registry.py). ``ModelRepository`` only reads, keeps no state and
may be used from any thread; each call does a few small blocking file-system
reads. A model name is one folder of the root: ``validate_name`` refuses
anything else, so nothing outside the repository can be read through a name.
Links inside model folders are followed (ConfigMap mounts are made of links).
A version folder is named by a positive integer without leading zeros, as
Triton's: "0", "01", "1.0" and "-1" are not versions and are ignored.

Imports model_store.pbtxt, .complete, .ensemble, .options, .config, .override, .sequence, .warmup and ops.errors; must
not import server, batching, kernels or grpc.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model_store import complete, ensemble, options
from model_store.config import ModelConfig, VersionPolicy
from model_store.override import ConfigOverride
from model_store.pbtxt import parse_config_text, stated_fields
from model_store.protos import model_config_pb2 as pb
from model_store.sequence import INITIAL_STATE_FOLDER
from model_store.warmup import WARMUP_FOLDER
from ops.errors import ConfigError, ModelNotFound

CONFIG_FILENAME = "config.pbtxt"
_VERSION = re.compile(r"[1-9][0-9]*")  # as Triton: "0" and "01" (it would clash with "1") are no versions
_NAME_MAX_BYTES = 255  # the longest folder name Linux file systems hold
_LISTED = 20  # models named in a not-found message

FileStat = tuple[str, int, int, int]  # (file name, inode, mtime_ns, size)
VersionFingerprint = tuple[FileStat | None, tuple[FileStat, ...]]  # (config.pbtxt, the version folder's files)
Fingerprint = tuple[FileStat | None, tuple[tuple[int, tuple[FileStat, ...]], ...]]  # (config.pbtxt, per version)


@dataclass(frozen=True)
class ModelSource:
    """One model as the repository holds it, read at one moment.

    ``versions`` maps each version whose folder holds the model file to that
    file; ``missing`` gives, for version folders without it, the reason to
    report. ``fingerprint`` changes when config.pbtxt or any non-hidden file
    directly in a version folder or in the model's warmup/ or initial_state/ folder changes (inode,
    mtime, size), or a version folder comes or goes; it is taken before the files are read, so a change
    made while reading shows in the next one. The message must not be mutated.
    """

    name: str
    path: Path
    config_message: pb.ModelConfig | None
    config_source: str  # config.pbtxt's path, or "<model folder> (no config.pbtxt)": for messages
    versions: dict[int, Path]
    missing: dict[int, str]
    fingerprint: Fingerprint
    stated_fields: frozenset[str] = field(default=frozenset())  # top-level fields config.pbtxt writes

    @property
    def is_ensemble(self) -> bool:
        """Whether the config is an ensemble's (model_store/ensemble.py): its versions are folders, no files."""
        return ensemble.is_ensemble(self.config_message)

    def build_ensemble_config(self) -> ModelConfig:
        """``ensemble.build_config`` for this model (an ensemble); raises ``ConfigError``."""
        assert self.config_message is not None
        return ensemble.build_config(self.name, self.config_message, self.config_source)

    def version_policy(self) -> VersionPolicy:
        """The config's version policy (checked when the source was read)."""
        if self.config_message is None:
            return VersionPolicy()
        return options.version_policy(self.config_message, options.Where(self.name, self.config_source))

    def version_fingerprint(self, version: int) -> VersionFingerprint:
        """What a load of ``version`` reads: config.pbtxt's and the version folder's file stats."""
        config, versions = self.fingerprint
        return config, dict(versions).get(version, ())

    def build_config(
        self, inputs: Sequence[complete.SignatureTensor], outputs: Sequence[complete.SignatureTensor]
    ) -> ModelConfig:
        """``complete.build_config`` for this model, with everything it needs from the source.

        Prefer this to calling ``build_config`` directly: it passes
        ``stated_fields``, without which ``max_batch_size: 0`` cannot be told
        from an absent max_batch_size. Raises ``ConfigError``.
        """
        return complete.build_config(
            self.name, self.config_message, inputs, outputs, self.config_source, stated=self.stated_fields
        )


@dataclass(frozen=True)
class _Scan:
    config: FileStat | None
    versions: dict[int, tuple[FileStat, ...]]

    @property
    def fingerprint(self) -> Fingerprint:
        return self.config, tuple(sorted(self.versions.items()))


class ModelRepository:
    """A model repository rooted at ``root``; see the module docstring. No I/O until called."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def model_names(self) -> list[str]:
        """Sorted names of the folders under root that ``validate_name`` accepts (hidden ones are left out).

        Raises ``ConfigError`` when root is not a folder.
        """
        try:
            entries = list(os.scandir(self.root))
        except OSError as exc:
            raise ConfigError(f"model repository {self.root} cannot be read: {exc.strerror or exc}") from exc
        names = [e.name for e in entries if name_problem(e.name) is None and _is_dir(e)]
        return sorted(n for n in names if self._escapes(n) is None)

    def validate_name(self, name: str) -> None:
        """Raise ``ModelNotFound`` unless ``name`` is one folder name directly under root.

        Refused: empty names, path separators, a leading dot (so ``.`` and
        ``..``), NUL and other control characters, names that are not UTF-8 (a
        folder whose name is other bytes) or longer than a folder name can be,
        and links that lead outside root. Reads no files but to resolve links.
        """
        problem = name_problem(name) or self._escapes(name)
        if problem:
            raise ModelNotFound(
                f"model name {name!r} is not valid: {problem}; a model name is a folder directly "
                "in the model repository",
                model=name,
            )

    def read(self, name: str, override: ConfigOverride | None = None) -> ModelSource:
        """Read model ``name``: its config (parsed and its version policy checked) and versions.

        With ``override`` (a load's config override, model_store/override.py), that is the config and
        config.pbtxt is not read; the fingerprint holds the override's stamp in place of config.pbtxt's stats.
        Raises ``ModelNotFound`` for an invalid or unknown name and
        ``ConfigError`` for a config.pbtxt that cannot be read or parsed.
        """
        model_dir = self._model_dir(name)
        scan = self._scan(model_dir)
        config_path = model_dir / CONFIG_FILENAME
        message: pb.ModelConfig | None = None
        stated: frozenset[str] = frozenset()
        if override is not None:
            message, stated, source = override.message, override.stated, override.source
            scan = _Scan(override.stamp, scan.versions)
        elif scan.config is not None:
            source = str(config_path)
            try:
                text = config_path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{source}: cannot be read as UTF-8 text: {exc}", model=name, source=source) from exc
            message = parse_config_text(text, source)
            stated = stated_fields(text)
            options.version_policy(message, options.Where(name, source))
        elif os.path.lexists(config_path):  # a folder (a ConfigMap mounted without subPath), a dangling link...
            source = str(config_path)
            raise ConfigError(
                f"{source}: is not a file (a folder, or a link to nothing); {CONFIG_FILENAME} must be a text file, "
                "or absent for a config completed from the model",
                model=name, source=source,
            )
        else:
            source = f"{model_dir} (no {CONFIG_FILENAME})"
        versions: dict[int, Path] = {}
        missing: dict[int, str] = {}
        if ensemble.is_ensemble(message):  # an ensemble's version folders hold no model file
            versions = {version: model_dir / str(version) for version in sorted(scan.versions)}
        filename = complete.model_filename(message, source)
        for version, files in sorted(scan.versions.items()):
            model_file = model_dir / str(version) / filename
            if version in versions:
                continue
            if any(file_stat[0] == filename for file_stat in files):
                versions[version] = model_file
            else:
                missing[version] = f"version {version} has no model file: {model_file} is missing or not a file"
        return ModelSource(name, model_dir, message, source, versions, missing, scan.fingerprint, stated)

    def fingerprint_of(self, name: str) -> Fingerprint:
        """``read(name).fingerprint`` without reading the config: stats only. Raises ``ModelNotFound``."""
        return self._scan(self._model_dir(name)).fingerprint

    # ---- helpers ------------------------------------------------------------------------------
    def _model_dir(self, name: str) -> Path:
        self.validate_name(name)
        model_dir = self.root / name
        if not os.path.isdir(model_dir):  # False, never an error, for whatever cannot be read
            present = self.model_names()
            listed = ", ".join(present[:_LISTED])
            if len(present) > _LISTED:
                listed += f" and {len(present) - _LISTED} more"
            raise ModelNotFound(
                f"model {name!r} is not in the repository at {self.root}; models present: {listed or 'none'}",
                model=name,
            )
        return model_dir

    def _escapes(self, name: str) -> str | None:
        """Why ``root/name`` resolves to somewhere other than a folder inside root, or None."""
        try:
            root = self.root.resolve()
            target = (self.root / name).resolve()
        except (OSError, RuntimeError):  # RuntimeError: a link loop
            return "it cannot be resolved (a link loop?)"
        if target == root or not target.is_relative_to(root):
            return "it is a link that leads outside the repository"
        return None

    def _scan(self, model_dir: Path) -> _Scan:
        config = _stat(model_dir / CONFIG_FILENAME)
        versions: dict[int, tuple[FileStat, ...]] = {}
        try:
            entries = list(os.scandir(model_dir))
        except OSError as exc:  # removed since the check: report it as gone
            raise ModelNotFound(f"model folder {model_dir} cannot be read: {exc.strerror or exc}") from exc
        # The warm-up data (model_warmup) and initial states (sequence_batching) are read by every version's
        # load: a change to them changes each version.
        warmup = tuple((f"{folder}/{name}", inode, mtime, size) for folder in (WARMUP_FOLDER, INITIAL_STATE_FOLDER)
                       for name, inode, mtime, size in _files(model_dir / folder))
        for entry in entries:
            if _VERSION.fullmatch(entry.name) and _is_dir(entry):
                versions[int(entry.name)] = _files(Path(entry.path)) + warmup
        return _Scan(config, versions)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one folder or file name inside the repository, or None."""
    if not name:
        return "it is empty"
    if "\0" in name:
        return "it contains a NUL character"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "it contains a path separator"
    if name.startswith("."):
        return "it starts with a dot"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):  # a newline would forge a log line
        return "it contains a control character"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a folder named by bytes that are not UTF-8: no client could name it
        return "it is not valid UTF-8"
    if size > _NAME_MAX_BYTES:
        return f"it is {size} bytes long; a folder name holds at most {_NAME_MAX_BYTES}"
    return None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _stat(path: Path) -> FileStat | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (path.name, st.st_ino, st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else None


def _files(folder: Path) -> tuple[FileStat, ...]:
    """Stats of the non-hidden regular files directly in ``folder``, by name; () if it is gone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return ()
    stats: list[FileStat] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_file():
                st = entry.stat()
                stats.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:  # removed while we looked
            continue
    return tuple(sorted(stats))

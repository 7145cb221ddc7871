"""What is loaded in memory, with its state: the registry (the store is on disk).

Contract:
- ``get(name, version)`` is the hot-path lookup: two dict reads, no awaits. It raises ModelNotFound for a name
  or version the repository does not have and ModelNotReady for one that is loading, unloading or failed.
- ``load(name)`` (re)reads the model from the repository, loads the versions its policy selects that are new
  or changed, then swaps them in atomically; versions no longer selected are removed from lookup first and
  closed after (closing drains their queued requests; ``retiring`` lists them meanwhile, for shutdown's drain
  timeout: model_store/retiring.py). A failed version load leaves any previous copy of that version serving
  and records the reason (the version stays READY, with the reason in ``index``); so does a version folder
  whose model file was deleted, logged once. A model with no version to serve (no version folders, or none its
  policy selects) is UNAVAILABLE with why; ``poll`` retries a failed model or version only once its files
  change. ``load`` raises when a version it selects did not load, even while a copy loaded earlier serves on
  (the caller of an explicit load learns it failed); ``load(name, retry=True)`` also tries again versions that
  failed from unchanged files.
- ``poll`` acts on a changed, new or removed model only once its files have stayed the same for one poll (they
  are compared with the previous poll's): a file still being copied in, or a config written in steps, is not
  loaded half-written.
- Loads and unloads of one model are serialised by a per-model lock, in call order (a load after an unload).
- ``load(name, config=text)`` loads with a config override (model_store/override.py) in place of config.pbtxt:
  each selected version loads again with it and replaces the version serving, as any reload; the next ``load``
  without one reads config.pbtxt again (and so loads each version again). ``files`` (with ``config``) load from a
  temporary folder of sent files (model_store/sent_files.py), removed once no version loaded from it serves.
- ``pin(name, versions)`` overrides one model's version policy (a fleet's desired state, model_store/reconcile.py).
- ``load`` and ``unload`` complete when their caller is cancelled meanwhile, as in Triton (``index`` and the log tell).
- ``loads.close()`` (the start of shutdown): loads are refused from then on, and one under way is not
  waited for and never serves (model_store/load_gate.py); ``close()`` then unloads everything and waits
  for every retired version's close.
- ``unready()``: the models that do not fully serve (strict readiness, server/readiness.py). Loop-bound.

Generic over the servable type: ``load_version(source, version)`` builds one, ``servable.close()`` releases it.
Its records are in model_store/model_state.py. Must not import server, batching or grpc.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Awaitable, Callable, Generic

from model_store import selection, sent_files
from model_store.load_gate import LoadGate
from model_store.model_state import IndexEntry, ModelRecord, ModelState, S, VersionStatus
from model_store.override import ConfigOverride, read_override
from model_store.repository import ModelRepository, ModelSource
from model_store.retiring import Retirements
from ops.errors import ConfigError, ModelNotFound, ModelNotReady, ServingError, ShuttingDown

log = logging.getLogger(__name__)
_KEPT = "serving the copy loaded earlier"  # a READY version's reason when its files in the repository fail
_ABSENT = object()  # the fingerprint ``poll`` records for a model folder that is not there
_VERSION_MAX_DIGITS = 255  # a version is a folder name: no longer than one can be


class ModelRegistry(Generic[S]):
    """See the module docstring."""

    def __init__(
        self,
        repository: ModelRepository,
        load_version: Callable[[ModelSource, int], Awaitable[S]],
        on_change: Callable[[], None] = lambda: None,
        on_load_failed: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.repository = repository
        self._load_version = load_version
        self._on_change = on_change
        self._on_load_failed = on_load_failed  # a model in the repository failed to load (config or version)
        self._models: dict[str, ModelRecord[S]] = {}
        self._pins: dict[str, frozenset[int]] = {}
        self._polled: dict[str, object] = {}  # the previous poll's fingerprints of the models it found changed
        self.loads: LoadGate[S] = LoadGate()
        self.retiring: Retirements[S] = Retirements()  # versions out of lookup, still closing

    # ---- hot path -------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> S:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model '{name}': it is not loaded on this server")
        if not version:
            if model.latest is None:
                raise ModelNotReady(f"model '{name}' is not ready: {model.why(None)}")
            return model.latest
        if not (version.isascii() and version.isdigit()):  # int() would also take " 1", "1_0" and "１"
            raise ModelNotFound(f"model '{name}' has no version '{version}': versions are whole numbers such as '1'")
        digits = version.lstrip("0") or "0"
        if len(digits) > _VERSION_MAX_DIGITS:  # int() would raise ValueError past 4,300 digits: an INTERNAL error
            raise ModelNotFound(f"model '{name}' has no version {digits[:20]}... ({len(digits)} digits: no version "
                                f"folder's name is that long); versions: {model.version_list()}")
        number = int(digits)
        servable = model.servables.get(number)
        if servable is None:
            if number not in model.status:
                if number in model.unselected:
                    raise ModelNotFound(
                        f"model '{name}' version {number} is in the repository but not served: {model.selection}; "
                        f"versions: {model.version_list()}"
                    )
                raise ModelNotFound(f"model '{name}' has no version {number}; versions: {model.version_list()}")
            raise ModelNotReady(f"model '{name}' version {number} is not ready: {model.why(number)}")
        return servable

    def ready_servables(self, name: str) -> dict[int, S]:
        model = self._models.get(name)
        return dict(model.servables) if model else {}

    def names(self) -> list[str]:
        return sorted(self._models)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.get(name, version) is not None
        except ServingError:
            return False

    # ---- control --------------------------------------------------------------------------
    async def load(self, name: str, retry: bool = False, config: str | None = None,
                   files: Mapping[str, bytes] | None = None) -> None:
        """Load or reload ``name`` from the repository.

        Raises ServingError when nothing serves, and ``ConfigError`` when a selected version did not load
        while others (or its own earlier copy) serve on. ``retry``: also load again the versions whose last
        load failed though their files have not changed since (an explicit load); else only changed files are.
        ``config``: a config override, JSON text used instead of config.pbtxt for this load (one that does not
        parse is refused, ``ConfigError``, before anything changes; model_store/override.py); the next load
        without one reads config.pbtxt again. A caller cancelled meanwhile does not cancel the load. ``files``
        (checked by ``sent_files.read_files``, with ``config``): the model's folder for this load, by path."""
        self.repository.validate_name(name)
        override = None if config is None else read_override(name, config)
        self.loads.check(name)
        await self.loads.outlive_caller(self._load(name, retry, override, files), f"load of model '{name}'")

    async def _load(self, name: str, retry: bool, override: ConfigOverride | None = None,
                    files: Mapping[str, bytes] | None = None) -> None:
        while True:
            model = self._models.setdefault(name, ModelRecord())
            async with model.lock:
                if self._models.get(name) is not model:
                    continue  # unloaded while we waited for the lock: load into the current entry
                self.loads.check(name)  # shutdown started while this load waited
                repository = self.repository
                if files is not None:
                    repository, override = await sent_files.write_folder_off_loop(name, files, override)
                    model.sent_folders.add(repository.root)
                try:
                    await self._load_locked(name, model, retry, override, repository)
                finally:  # a folder of sent files lives while a version loaded from it serves
                    await sent_files.remove_unused(model.sent_folders, model.origins.values())
                return

    async def _load_locked(self, name: str, model: ModelRecord[S], retry: bool, override: ConfigOverride | None,
                           repository: ModelRepository) -> None:
        fingerprint: object = None
        try:
            fingerprint = repository.fingerprint_of(name)  # before the read: a change meanwhile shows next poll
            source = repository.read(name, override)
        except ServingError as exc:
            model.reason = exc.message
            model.reason_fingerprint = fingerprint
            log.error("model '%s' cannot load: %s", name, exc.message)
            if not isinstance(exc, ModelNotFound):
                self._on_load_failed(name)
            if isinstance(exc, ModelNotFound) and not model.servables:
                self._forget(name, model)
            self._on_change()
            raise
        model.reason = ""
        wanted = await self._apply(model, source, retry)
        if model.reason:
            log.error("model '%s' cannot load: %s", name, model.reason)
            self._on_load_failed(name)
        self._on_change()
        if not model.servables:
            if override is not None:  # an override that does not fit the model is the request's fault
                raise ConfigError(f"model '{name}' did not load with its config override: {model.why(None)}", model=name)
            raise ModelNotReady(f"model '{name}' did not load: {model.why(None)}")
        as_asked = "with its config override" if override else "as the repository has it"
        failed = [v for v in sorted(wanted) if self._failed(model, v)]
        if failed:  # a copy loaded earlier serves on (the version's reason says so), or other versions do
            why = "; ".join(  # a READY version's reason already says its earlier copy serves
                f"version {v}: {model.status[v].reason}" if v in model.servables
                else f"version {v} {model.why(v)}"
                for v in failed
            )
            others = sorted(set(model.servables) - set(failed))
            if others:
                why += f"; serving version{'s' if len(others) > 1 else ''} {', '.join(str(v) for v in others)}"
            raise ConfigError(f"model '{name}' did not load {as_asked}: {why}", model=name)

    def _forget(self, name: str, model: ModelRecord[S]) -> None:
        if self._models.get(name) is model:  # not a newer entry a load made meanwhile
            del self._models[name]

    def pin(self, name: str, versions: frozenset[int] | set[int] | None) -> None:
        """From the next ``load(name)``, serve exactly ``versions`` (those the repository has) instead of what
        the version policy selects; None returns the model to its policy. Loads nothing by itself."""
        if versions is None:
            self._pins.pop(name, None)
        else:
            self._pins[name] = frozenset(versions)

    def _wanted(self, source: ModelSource) -> set[int]:
        return selection.wanted(source, self._pins.get(source.name))

    async def _apply(self, model: ModelRecord[S], source: ModelSource, retry: bool = False) -> set[int]:
        """Serve what ``source`` selects; returns the versions it selects."""
        wanted = self._wanted(source)
        present = set(source.versions) | set(source.missing)
        model.unselected = frozenset(present - wanted)
        model.selection = selection.describe(source, self._pins.get(source.name))
        if not wanted:
            model.reason = selection.nothing_to_serve(source, self._pins.get(source.name))
            model.reason_fingerprint = source.fingerprint
        for version in sorted(wanted):
            fingerprint = source.version_fingerprint(version)
            if model.fingerprints.get(version) == fingerprint and not (retry and self._failed(model, version)):
                continue  # loaded, or failed, from exactly these files: nothing new to try
            if version in source.missing:
                if version in model.servables:  # its model file was deleted: the loaded copy keeps serving
                    log.error("model '%s' version %d failed to load: %s", source.name, version, source.missing[version])
                    self._on_load_failed(source.name)
                    self._record_failure(model, version, fingerprint, source.missing[version])
                else:
                    model.fingerprints[version] = fingerprint
                    model.status[version] = VersionStatus(ModelState.UNAVAILABLE, source.missing[version])
                continue
            if version not in model.servables:  # a reload keeps reporting READY while the new copy loads
                model.status[version] = VersionStatus(ModelState.LOADING)
            try:
                servable = await self.loads.run(source.name, version, lambda: self._load_version(source, version))
            except ShuttingDown:
                if version not in model.servables:
                    model.status[version] = VersionStatus(ModelState.UNAVAILABLE, "the server is shutting down")
                raise
            except ServingError as exc:
                log.error("model '%s' version %d failed to load: %s", source.name, version, exc.message)
                self._on_load_failed(source.name)
                self._record_failure(model, version, fingerprint, exc.message)
                continue
            except Exception as exc:  # a bug or an unexpected library error: still keep serving others
                log.exception("model '%s' version %d failed to load", source.name, version)
                self._on_load_failed(source.name)
                self._record_failure(model, version, fingerprint, f"load failed: {exc!r}")
                continue
            old = model.servables.get(version)
            model.servables[version] = servable
            model.origins[version] = source.path
            model.fingerprints[version] = fingerprint
            model.status[version] = VersionStatus(ModelState.READY)
            model.publish()
            if old is not None:
                await self.retiring.close(old)
        if wanted & set(model.servables) or not wanted:
            for version in sorted(set(model.servables) - wanted):
                await self._retire(model, version)
        elif model.servables:
            log.warning("model '%s': no selected version loaded; versions %s keep serving",
                        source.name, ", ".join(str(v) for v in sorted(model.servables)))
        for version in list(model.status):
            if version not in wanted and version not in model.servables:
                del model.status[version]
                model.fingerprints.pop(version, None)
        return wanted

    @staticmethod
    def _failed(model: ModelRecord[S], version: int) -> bool:
        """Whether the last load of ``version`` failed (UNAVAILABLE, or READY on a copy loaded earlier)."""
        status = model.status.get(version)
        return status is not None and bool(status.reason)

    @staticmethod
    def _record_failure(model: ModelRecord[S], version: int, fingerprint: object, reason: str) -> None:
        """Remember the failed files so polls do not retry them until they change."""
        model.fingerprints[version] = fingerprint
        if version in model.servables:  # the previous copy of this version keeps serving: say why it is old
            model.status[version] = VersionStatus(ModelState.READY, f"{_KEPT}; reloading it failed: {reason}")
        else:
            model.status[version] = VersionStatus(ModelState.UNAVAILABLE, reason)

    async def _retire(self, model: ModelRecord[S], version: int) -> None:
        servable = model.servables.pop(version)
        model.origins.pop(version, None)
        model.fingerprints.pop(version, None)
        model.status[version] = VersionStatus(ModelState.UNLOADING)
        model.publish()
        self._on_change()
        try:
            await self.retiring.close(servable)
        finally:
            model.status.pop(version, None)

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name``; queued requests finish first; completes as ``load`` does."""
        self.repository.validate_name(name)
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model '{name}': it is not loaded on this server")
        await self.loads.outlive_caller(self._unload(name, model), f"unload of model '{name}'")

    async def _unload(self, name: str, model: ModelRecord[S] | None) -> None:
        while model is not None:
            async with model.lock:
                if self._models.get(name) is model:
                    for version in sorted(model.servables):
                        await self._retire(model, version)
                    model.status.clear()
                    await sent_files.remove_unused(model.sent_folders, ())
                    self._forget(name, model)
            model = self._models.get(name)  # loaded again while we waited: that load came first, unload it too
        self._on_change()

    async def load_all(self) -> None:
        """Load every model in the repository; failures are recorded, not raised."""
        for name in self.repository.model_names():
            try:
                await self.load(name)
            except ServingError:
                pass

    async def poll(self) -> None:
        """Apply repository changes that have settled: new or changed models load, removed ones unload.

        A model is acted on only when its files are the same as at the previous poll (``_settled``), so
        a change still being made (a model file copied in chunks, a config written in two steps, a model
        folder deleted and copied anew) is applied once complete, not half-way.
        """
        present = set(self.repository.model_names())
        previous, self._polled = self._polled, {}
        for name in sorted(present):
            model = self._models.get(name)
            if model is not None and not self._changed(name, model):
                continue
            if not self._settled(name, previous):
                continue
            try:
                await self.load(name)
            except ServingError:
                pass
        for name in sorted(set(self._models) - present):
            if self._settled(name, previous):
                await self.unload(name)

    def _settled(self, name: str, previous: dict[str, object]) -> bool:
        """Record ``name``'s files for the next poll; whether they are what the previous poll recorded."""
        try:
            fingerprint: object = self.repository.fingerprint_of(name)
        except ServingError:
            fingerprint = _ABSENT
        self._polled[name] = fingerprint
        if name in previous and previous[name] == fingerprint:
            return True
        log.debug("model '%s': its files changed since the last poll; applied once they stay unchanged for a poll",
                  name)
        return False

    def _changed(self, name: str, model: ModelRecord[S]) -> bool:
        if model.reason:  # failed as a whole: try again once its files change
            try:
                return self.repository.fingerprint_of(name) != model.reason_fingerprint
            except ServingError:
                return True
        try:
            source = self.repository.read(name)
        except ServingError:
            return True
        wanted = self._wanted(source)
        if wanted - set(model.status):
            return True  # versions not tried yet
        if any(model.fingerprints.get(v) != source.version_fingerprint(v) for v in wanted):
            return True  # files changed (or the model file went) since the last attempt
        retired = set(model.servables) - wanted
        return bool(retired) and (bool(wanted & set(model.servables)) or not wanted)

    async def close(self) -> None:
        self.loads.close()
        for name in list(self._models):
            await self.unload(name)
        await self.retiring.wait_closed()  # also those whose reload or unload was cancelled (a poll's)

    # ---- reporting ------------------------------------------------------------------------
    def unready(self) -> list[str]:
        """The models loaded (or tried) that do not fully serve (``ModelRecord.serves_fully``): strict readiness."""
        return sorted(name for name, model in self._models.items() if not model.serves_fully())

    def index(self) -> list[IndexEntry]:
        """Every model in the repository with each version's state (RepositoryIndex)."""
        entries: list[IndexEntry] = []
        for name in sorted(set(self.repository.model_names()) | set(self._models)):
            model = self._models.get(name)
            if model is None:
                entries.append(IndexEntry(name, "", ModelState.UNAVAILABLE, "not loaded"))
                continue
            if model.reason and not model.status:
                entries.append(IndexEntry(name, "", ModelState.UNAVAILABLE, model.reason))
            for version, status in sorted(model.status.items()):
                reason = status.reason
                if model.reason and status.state is ModelState.READY and not reason:
                    reason = f"{_KEPT}; the repository's files do not load: {model.reason}"
                entries.append(IndexEntry(name, str(version), status.state, reason))
        return entries

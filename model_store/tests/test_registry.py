"""The registry's polling and explicit loads against a real repository on disk, with fake servables.

Each test drives ``poll`` or ``load`` by hand, so what a poll sees between two writes is exact, not a
matter of timing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from model_store.registry import ModelRegistry
from model_store.repository import ModelRepository, ModelSource
from ops.errors import ConfigError, ModelNotFound

COMPLETE = b"#end\n"  # a fake model file loads only when it ends so: a half-written one fails, as ONNX would


class FakeServable:
    def __init__(self, version: int, content: bytes) -> None:
        self.version = version
        self.content = content

    async def close(self) -> None:
        pass


class Server:
    """A registry over ``root`` whose loads read the model file, recording each load and failure."""

    def __init__(self, root: Path) -> None:
        self.loads: list[tuple[int, bytes]] = []
        self.failures: list[str] = []
        self.registry: ModelRegistry[FakeServable] = ModelRegistry(
            ModelRepository(root), self.load, on_load_failed=self.failures.append
        )

    async def load(self, source: ModelSource, version: int) -> FakeServable:
        content = source.versions[version].read_bytes()
        self.loads.append((version, content))
        if not content.endswith(COMPLETE):
            raise ConfigError(f"{source.versions[version]} is not a complete model file")
        return FakeServable(version, content)

    def serving(self, name: str = "m") -> dict[int, bytes]:
        return {v: s.content for v, s in sorted(self.registry.ready_servables(name).items())}


def model_file(root: Path, version: int, content: bytes, name: str = "m") -> Path:
    path = root / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


async def test_a_model_file_written_in_chunks_loads_once_complete_and_the_old_copy_serves_meanwhile(tmp_path: Path):
    path = model_file(tmp_path, 1, b"old" + COMPLETE)
    server = Server(tmp_path)
    await server.registry.load_all()
    server.loads.clear()
    with path.open("wb") as f:  # `cp` of a big file: truncated, then written chunk by chunk
        f.write(b"new, first half")
        f.flush()
        await server.registry.poll()  # the file is changing: nothing is loaded yet
        assert server.loads == [] and server.serving() == {1: b"old" + COMPLETE}
        f.write(b", second half")
        f.flush()
        await server.registry.poll()
        f.write(COMPLETE)
    await server.registry.poll()  # changed since the last poll: still waiting
    assert server.loads == [] and server.serving() == {1: b"old" + COMPLETE}
    await server.registry.poll()  # unchanged for a poll: loaded, complete
    new = b"new, first half, second half" + COMPLETE
    assert server.loads == [(1, new)] and server.serving() == {1: new}
    assert server.failures == []  # no failed load was recorded (nor logged, nor counted) for a copy under way
    assert [(e.version, e.state.value, e.reason) for e in server.registry.index()] == [("1", "READY", "")]


async def test_a_model_file_rewritten_in_place_is_never_served_half_old_half_new(tmp_path: Path):
    path = model_file(tmp_path, 1, b"AAAA" + COMPLETE)
    server = Server(tmp_path)
    await server.registry.load_all()
    with path.open("r+b") as f:  # rsync --inplace: the size never changes, and every state loads
        f.write(b"BB")
        f.flush()
        os.utime(path, ns=(10**18, 10**18))  # each write a new mtime, however coarse the file system's clock
        await server.registry.poll()
        assert server.serving() == {1: b"AAAA" + COMPLETE}
        f.write(b"BB")
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    await server.registry.poll()
    await server.registry.poll()
    assert server.serving() == {1: b"BBBB" + COMPLETE}
    assert [content for _, content in server.loads] == [b"AAAA" + COMPLETE, b"BBBB" + COMPLETE]


async def test_a_config_written_in_two_steps_never_takes_a_served_version_down(tmp_path: Path):
    for version in (1, 2):
        model_file(tmp_path, version, b"v%d" % version + COMPLETE)
    config = tmp_path / "m" / "config.pbtxt"
    config.write_text("version_policy: { all { } }\n")
    server = Server(tmp_path)
    await server.registry.load_all()
    assert set(server.serving()) == {1, 2}
    config.write_text("max_batch_size: 8\n")  # first step: valid, but without the policy (latest 1 by default)
    await server.registry.poll()
    assert set(server.serving()) == {1, 2}  # version 1 was not retired by the half-written config
    with config.open("a") as f:
        f.write("version_policy: { all { } }\n")
    await server.registry.poll()
    assert set(server.serving()) == {1, 2}
    await server.registry.poll()  # settled: both versions reload with the new config, and serve
    assert set(server.serving()) == {1, 2} and sorted(v for v, _ in server.loads) == [1, 1, 2, 2]


async def test_a_model_folder_deleted_and_copied_anew_is_not_unloaded_but_one_removed_is(tmp_path: Path):
    model_file(tmp_path, 1, b"old" + COMPLETE)
    server = Server(tmp_path)
    await server.registry.load_all()
    shutil.rmtree(tmp_path / "m")  # `rm -r m && cp -r new/m m`, seen between the two
    await server.registry.poll()
    assert server.serving() == {1: b"old" + COMPLETE}
    model_file(tmp_path, 1, b"newer" + COMPLETE)
    await server.registry.poll()
    await server.registry.poll()
    assert server.serving() == {1: b"newer" + COMPLETE}
    shutil.rmtree(tmp_path / "m")  # removed for good: unloaded once the next poll sees it gone too
    await server.registry.poll()
    assert server.serving() == {1: b"newer" + COMPLETE}
    await server.registry.poll()
    assert server.registry.names() == []


async def test_an_explicit_load_that_fails_says_so_while_the_old_copy_serves_and_is_retried(tmp_path: Path):
    path = model_file(tmp_path, 1, b"old" + COMPLETE)
    server = Server(tmp_path)
    await server.registry.load("m")
    path.write_bytes(b"truncated")
    for _ in range(2):  # the same broken file: tried again when asked again, and the answer stays an error
        with pytest.raises(ConfigError) as err:
            await server.registry.load("m", retry=True)
        assert err.value.message == (
            f"model 'm' did not load as the repository has it: version 1: serving the copy loaded earlier; "
            f"reloading it failed: {path} is not a complete model file"
        )
        assert server.serving() == {1: b"old" + COMPLETE}
    assert [content for _, content in server.loads] == [b"old" + COMPLETE, b"truncated", b"truncated"]
    model_file(tmp_path, 2, b"broken")  # a new version that fails: the one before serves on, and is named
    with pytest.raises(ConfigError) as err:
        await server.registry.load("m")
    broken = tmp_path / "m" / "2" / "model.onnx"
    assert f"version 2 UNAVAILABLE: {broken} is not a complete model file" in str(err.value)
    assert str(err.value).endswith("; serving version 1")
    model_file(tmp_path, 1, b"fixed" + COMPLETE)
    model_file(tmp_path, 2, b"fixed" + COMPLETE)
    await server.registry.load("m")  # no error: every selected version loaded
    assert server.serving() == {2: b"fixed" + COMPLETE}


async def test_a_version_present_but_not_selected_is_not_found_with_the_reason(tmp_path: Path):
    for version in (1, 2, 3):
        model_file(tmp_path, version, b"v" + COMPLETE)
    server = Server(tmp_path)
    await server.registry.load("m")
    with pytest.raises(ModelNotFound) as err:
        server.registry.get("m", "1")
    assert err.value.message == ("model 'm' version 1 is in the repository but not served: its version_policy is "
                                 "latest { num_versions: 1 } (the default); versions: 3")
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy: { specific: { versions: [ 1, 3 ] } }\n")
    await server.registry.load("m")
    with pytest.raises(ModelNotFound) as err:
        server.registry.get("m", "2")
    assert "version 2 is in the repository but not served: its version_policy is specific { versions: [1, 3] }; " \
           "versions: 1, 3" in err.value.message
    with pytest.raises(ModelNotFound) as err:
        server.registry.get("m", "7")
    assert err.value.message == "model 'm' has no version 7; versions: 1, 3"


async def test_a_version_too_long_to_be_a_folder_name_is_not_found_not_an_internal_error(tmp_path: Path):
    model_file(tmp_path, 1, b"v" + COMPLETE)
    server = Server(tmp_path)
    await server.registry.load("m")
    for version in ("9" * 5000, "1" * 256):  # was: ValueError from int() past 4,300 digits (INTERNAL, 500)
        with pytest.raises(ModelNotFound) as err:
            server.registry.get("m", version)
        assert err.value.message == (f"model 'm' has no version {version[:20]}... ({len(version)} digits: no version "
                                     "folder's name is that long); versions: 1")
        assert not server.registry.is_ready("m", version)
    assert server.registry.get("m", "0" * 5000 + "1").version == 1  # leading zeros, as in "01"


def loading_as(kind: type[FakeServable], root: Path) -> Server:
    """A ``Server`` over ``root`` whose versions load as ``kind`` (a FakeServable with a ``close`` of its own)."""
    class KindServer(Server):
        async def load(self, source: ModelSource, version: int) -> FakeServable:
            loaded = await super().load(source, version)
            return kind(loaded.version, loaded.content)

    return KindServer(root)


async def test_a_reload_does_not_wait_for_a_version_that_closes_in_the_background(tmp_path: Path):
    """A sequence model's old copy finishes its live sequences as they come (server/servable.py): the load that
    replaced it returns at once, and the copy stays listed in ``retiring`` until its close ends."""
    path = model_file(tmp_path, 1, b"old" + COMPLETE)
    finished = asyncio.Event()  # the old copy's last sequence ends

    class Lingering(FakeServable):
        closes_in_background = True

        async def close(self) -> None:
            await finished.wait()

    server = loading_as(Lingering, tmp_path)
    await server.registry.load_all()
    path.write_bytes(b"new" + COMPLETE)
    await asyncio.wait_for(server.registry.load("m"), 1)  # returns though the old copy's close goes on

    assert server.serving() == {1: b"new" + COMPLETE}
    assert [s.content for s in server.registry.retiring.servables()] == [b"old" + COMPLETE]
    finished.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert server.registry.retiring.servables() == []


async def test_a_swapped_out_version_is_retiring_until_its_close_ends_though_its_reload_was_cancelled(tmp_path: Path):
    """Shutdown's drain timeout answers the requests of the versions ``retiring`` lists (server/app.py). A reload
    cancelled mid-swap (shutdown cancels its poller) used to cancel the old copy's close too: its queue drained
    on unlisted and its kernel was never released. Now the close runs on, listed, and ``close`` waits for it."""
    path = model_file(tmp_path, 1, b"old" + COMPLETE)
    drained = asyncio.Event()  # the old copy's queue still has requests until this is set
    closed: list[bytes] = []

    class Draining(FakeServable):
        async def close(self) -> None:
            await drained.wait()
            closed.append(self.content)

    server = loading_as(Draining, tmp_path)
    await server.registry.load_all()
    path.write_bytes(b"new" + COMPLETE)
    reload = asyncio.ensure_future(server.registry.load("m"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert server.serving() == {1: b"new" + COMPLETE}
    assert [s.content for s in server.registry.retiring.servables()] == [b"old" + COMPLETE]
    server.registry.loads.close()  # shutdown starts, then cancels the poller running the reload
    reload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reload
    assert [s.content for s in server.registry.retiring.servables()] == [b"old" + COMPLETE]
    closing = asyncio.ensure_future(server.registry.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done() and closed == []
    drained.set()
    await asyncio.wait_for(closing, 1)
    assert sorted(closed) == [b"new" + COMPLETE, b"old" + COMPLETE]
    assert server.registry.retiring.servables() == []

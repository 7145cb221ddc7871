"""model_store/sent_files.py: which paths a load's files may have, and their temporary folder."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from model_store.override import read_override
from model_store.sent_files import (
    OWNER_FILE,
    path_problem,
    read_files,
    remove_folder,
    remove_stale,
    remove_unused,
    write_folder,
    write_folder_off_loop,
)
from model_store.testing import write_add_constant_model
from ops.errors import InvalidInput


@pytest.mark.parametrize("path", ["1/model.onnx", "12/weights.bin", "warmup/sample", "labels.txt"])
def test_paths_in_a_version_folder_warmup_or_the_model_folder_are_accepted(path: str):
    assert path_problem(path) is None


@pytest.mark.parametrize("path, problem", [
    ("", "empty"), ("/1/model.onnx", "absolute"), ("../x", "'..'"), ("1/../../x", "'..'"), ("./1/model.onnx", "'.'"),
    ("1//model.onnx", "empty part"), ("1/model.onnx/", "empty part"), ("1/a\0b", "NUL"), ("1/.hidden", "dot"),
    ("1/a/b", "too deep"), ("0/model.onnx", "not a version folder"), ("v1/model.onnx", "not a version folder"),
    ("config.pbtxt", "'config' parameter"),
])
def test_bad_paths_are_refused(path: str, problem: str):
    assert problem in (path_problem(path) or "")


def test_read_files_checks_values_and_wants_config():
    assert read_files("m", {"config": "{}"}) is None
    assert read_files("m", {"config": "{}", "file:1/model.onnx": b"x"}) == {"1/model.onnx": b"x"}
    with pytest.raises(InvalidInput, match="must hold the file's content as bytes"):
        read_files("m", {"config": "{}", "file:1/model.onnx": "x"})
    with pytest.raises(InvalidInput, match="needs the 'config' parameter too"):
        read_files("m", {"file:1/model.onnx": b"x"})
    with pytest.raises(InvalidInput, match="load parameter 'file:../x'"):
        read_files("m", {"config": "{}", "file:../x": b"x"})


def test_the_folder_reads_as_a_model_folder_and_is_removed_once_unused(tmp_path: Path):
    model = write_add_constant_model(tmp_path / "add").read_bytes()
    repository = write_folder("m", {"1/model.onnx": model, "labels.txt": b"a\n"})
    source = repository.read("m", read_override("m", json.dumps({"max_batch_size": 4})))
    assert source.versions == {1: repository.root / "m" / "1" / "model.onnx"}
    assert repository.root.stat().st_mode & 0o077 == 0

    folders = {repository.root}
    asyncio.run(remove_unused(folders, [source.path]))  # a version loaded from it serves: kept
    assert folders == {repository.root} and repository.root.is_dir()
    asyncio.run(remove_unused(folders, [tmp_path / "repo" / "m"]))  # none does: removed
    assert folders == set() and not repository.root.exists()


def test_each_load_gets_its_own_folder_and_fingerprint(tmp_path: Path):
    override = read_override("m", "{}")

    async def write_twice():
        return [await write_folder_off_loop("m", {"1/model.onnx": b"x"}, override) for _ in range(2)]

    (first, first_override), (second, second_override) = asyncio.run(write_twice())
    assert first.root != second.root
    assert first_override.stamp != second_override.stamp != override.stamp
    asyncio.run(remove_unused({first.root, second.root}, []))
    assert not first.root.exists() and not second.root.exists()


# ---- folders left by servers that ended without their shutdown -------------------------------------------

_OWNER = """
import os, sys, tempfile, time
tempfile.tempdir = sys.argv[1]
from model_store.sent_files import write_folder
root = write_folder("m", {"1/model.onnx": b"onnx"}).root
print(root, flush=True)
if sys.argv[2] == "exit":
    os._exit(0)  # as a killed server: no shutdown, no removal
time.sleep(120)
"""


def _owner(scratch: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    """A process that writes a folder of sent files under ``scratch``, then exits at once or lives on."""
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(scratch), mode], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    with proc.stdout:
        return proc, Path(proc.stdout.readline().strip())


def _age(root: Path, seconds: float = 3600) -> None:
    """Make ``root``'s lock file as old as a folder left long ago."""
    then = time.time() - seconds
    os.utime(root / OWNER_FILE, (then, then))


def test_remove_stale_removes_the_folders_of_ended_processes_only(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended, ended_root = _owner(tmp_path, "exit")
    ended.wait(30)
    living, living_root = _owner(tmp_path, "live")
    mine = write_folder("m", {"1/model.onnx": b"onnx"}).root
    young, young_root = _owner(tmp_path, "exit")
    young.wait(30)
    other = tmp_path / "fleetserve-load-files-not-a-folder"
    other.write_text("x")
    try:
        for root in (ended_root, living_root, mine):
            _age(root)

        assert remove_stale() == [ended_root]

        assert not ended_root.exists()
        assert living_root.exists() and mine.exists() and other.exists()
        assert young_root.exists()  # made a moment ago: its maker might not hold the lock yet
        living.kill()
        living.wait(30)
        assert remove_stale() == [living_root]  # the kernel let go of the lock of a killed process
        assert mine.exists()
    finally:
        living.kill()
        remove_folder(mine)
    assert not (mine / OWNER_FILE).exists()
    _age(young_root)
    assert remove_stale() == [young_root]

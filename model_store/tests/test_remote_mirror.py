"""The remote-repository mirror against real servers: moto_server (S3 API) and http.server, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from model_store.remote import MANIFEST_FILENAME, MirrorConfig, MirroredRepository, RepositoryMirror
from model_store.remote_store import RemoteStoreError, parse_index, write_index
from model_store.remote_testing import CREDENTIALS, HttpServer, S3Server
from model_store.testing import ModelSpec, write_add_constant_model, write_dense_model, write_model_repository
from ops.errors import ModelNotReady

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3():
    with pytest.MonkeyPatch.context() as env:
        for key, value in CREDENTIALS.items():
            env.setenv(key, value)
        with S3Server() as server:
            yield server


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def repository(root: Path) -> Path:
    return write_model_repository(root, {
        "dense": ModelSpec(write_dense_model),
        "add_one": ModelSpec(write_add_constant_model, config="max_batch_size: 8"),
    })


def mirror_of(s3: S3Server, prefix: str, cache: Path) -> RepositoryMirror:
    return RepositoryMirror(MirrorConfig(s3.url(prefix), cache, s3.endpoint_url))


def inode(path: Path) -> int:
    return path.stat().st_ino


def test_s3_sync_mirrors_the_repository_and_downloads_only_what_changed(s3: S3Server, tmp_path: Path):
    local = repository(tmp_path / "repo")
    s3.upload(local, "a")
    mirror = mirror_of(s3, "a", tmp_path / "cache")
    report = mirror.sync()
    assert sorted(report.downloaded) == ["add_one/1/model.onnx", "add_one/config.pbtxt", "dense/1/model.onnx"]
    for rel in report.downloaded:
        assert (mirror.root / rel).read_bytes() == (local / rel).read_bytes()
    assert MirroredRepository(mirror).model_names() == ["add_one", "dense"]
    dense_v1, add_one_link = inode(mirror.root / "dense/1/model.onnx"), os.readlink(mirror.root / "add_one")

    assert mirror.sync().downloaded == ()  # nothing changed: nothing fetched, nothing republished

    write_add_constant_model(local / "dense" / "2", constant=2.0)
    s3.upload(local / "dense" / "2", "a/dense/2")
    report = mirror.sync()
    assert report.downloaded == ("dense/2/model.onnx",) and report.updated == ("dense",)
    assert inode(mirror.root / "dense/1/model.onnx") == dense_v1  # a hard link: the registry sees no change
    assert os.readlink(mirror.root / "add_one") == add_one_link
    assert sorted(MirroredRepository(mirror).read("dense").versions) == [1, 2]

    s3.delete("a/add_one")
    report = mirror.sync()
    assert report.removed == ("add_one",) and not (mirror.root / "add_one").exists()
    assert MirroredRepository(mirror).model_names() == ["dense"]


def test_folder_markers_are_not_files(s3: S3Server, tmp_path: Path):
    s3.put(b"", "g/dense/")  # what "create folder" in a bucket console leaves
    s3.put(b"", "g/empty/")
    s3.upload(repository(tmp_path / "repo") / "dense", "g/dense")
    mirror = mirror_of(s3, "g", tmp_path / "cache")
    assert MirroredRepository(mirror).model_names() == []  # before the first sync
    assert mirror.sync().downloaded == ("dense/1/model.onnx",)
    assert MirroredRepository(mirror).model_names() == ["dense"]


def test_a_changed_file_replaces_the_snapshot_atomically_and_old_snapshots_are_pruned(s3: S3Server, tmp_path: Path):
    local = repository(tmp_path / "repo")
    s3.upload(local, "b")
    mirror = mirror_of(s3, "b", tmp_path / "cache")
    mirror.sync()
    for constant in (5.0, 6.0, 7.0):
        write_add_constant_model(local / "add_one" / "1", constant=constant)
        s3.upload(local / "add_one", "b/add_one")
        assert mirror.sync().downloaded == ("add_one/1/model.onnx",)
        assert (mirror.root / "add_one/1/model.onnx").read_bytes() == (local / "add_one/1/model.onnx").read_bytes()
    snapshots = sorted(p.name for p in (mirror.root / ".snapshots" / "add_one").iterdir())
    assert snapshots == ["3", "4"]  # the current one and the one before it
    manifest = json.loads((mirror.root / "add_one" / MANIFEST_FILENAME).read_text())
    assert set(manifest["files"]) == {"1/model.onnx", "config.pbtxt"}
    assert not (mirror.root / ".staging").exists()


def test_a_size_mismatch_keeps_the_previous_copy_or_reports_the_version_unavailable(s3: S3Server, tmp_path: Path):
    local = repository(tmp_path / "repo")
    write_index(local)
    s3.upload(local, "c")
    mirror = mirror_of(s3, "c", tmp_path / "cache")
    assert mirror.sync().failures == {}
    good = (mirror.root / "dense/1/model.onnx").read_bytes()
    write_dense_model(local / "dense" / "2")
    write_add_constant_model(local / "dense" / "1", constant=3.0)  # v1 changes too
    index = json.loads(write_index(local).read_text())
    for entry in index["files"]:
        if entry["path"].startswith("dense/"):
            entry["size"] += 1  # what the store serves no longer matches the index
    (local / "index.json").write_text(json.dumps(index))
    s3.upload(local, "c")
    report = mirror.sync()
    assert set(report.failures) == {"dense"}
    reason = report.failures["dense"].versions[2]
    assert "dense/2/model.onnx: size mismatch: the index says" in reason and "the file was not used" in reason
    assert (mirror.root / "dense/1/model.onnx").read_bytes() == good  # v1's last good copy keeps serving
    source = MirroredRepository(mirror).read("dense")
    assert sorted(source.versions) == [1] and source.missing == {2: reason}


def test_a_model_whose_config_cannot_be_downloaded_is_reported(s3: S3Server, tmp_path: Path):
    local = repository(tmp_path / "repo")
    index = json.loads(write_index(local).read_text())
    for entry in index["files"]:
        if entry["path"] == "add_one/config.pbtxt":
            entry["sha256"] = "0" * 64
    (local / "index.json").write_text(json.dumps(index))
    s3.upload(local, "d")
    mirror = mirror_of(s3, "d", tmp_path / "cache")
    report = mirror.sync()
    assert "add_one/config.pbtxt: sha256 mismatch" in report.failures["add_one"].reason
    repo = MirroredRepository(mirror)
    assert repo.model_names() == ["add_one", "dense"]
    with pytest.raises(ModelNotReady, match="could not be downloaded: .*sha256 mismatch"):
        repo.read("add_one")


def test_a_download_whose_md5_is_not_the_listed_etag_is_refused(s3: S3Server, tmp_path: Path):
    from model_store.remote_store import RemoteFile, RemoteStore

    s3.put(b"12345", "e/m/1/model.onnx")
    store = RemoteStore(s3.url("e"), s3_endpoint_url=s3.endpoint_url)
    [listed] = store.list_files().values()
    assert listed.size == 5 and len(listed.etag) == 32
    store.download(listed, tmp_path / "ok")
    with pytest.raises(RemoteStoreError, match="changed while it was downloaded"):
        store.download(RemoteFile(listed.path, 5, etag="0" * 32), tmp_path / "bad")


def test_a_stray_key_that_is_no_relative_path_is_skipped_not_fatal(s3: S3Server, tmp_path: Path):
    s3.upload(repository(tmp_path / "repo"), "g")
    s3.put(b"notes", "g/dense//notes.txt")  # S3 allows empty key components; a path cannot have them
    mirror = mirror_of(s3, "g", tmp_path / "cache")
    report = mirror.sync()
    assert sorted(report.downloaded) == ["add_one/1/model.onnx", "add_one/config.pbtxt", "dense/1/model.onnx"]
    assert report.failures == {}


def test_a_key_the_mirror_cannot_write_is_skipped_and_every_other_model_syncs(s3: S3Server, tmp_path: Path):
    s3.upload(repository(tmp_path / "repo"), "l")
    s3.put(b"x", "l/" + "M" * 300 + "/1/model.onnx")  # S3 keys hold 1024 bytes, a folder name 255
    s3.put(b"x", "l/dense/1/" + "f" * 300)
    mirror = mirror_of(s3, "l", tmp_path / "cache")
    report = mirror.sync()  # was: OSError (File name too long), and no model after it in the listing synced
    assert sorted(report.downloaded) == ["add_one/1/model.onnx", "add_one/config.pbtxt", "dense/1/model.onnx"]
    assert report.failures == {} and MirroredRepository(mirror).model_names() == ["add_one", "dense"]


INDEXED = {"path": "m/1/model.onnx", "size": 1, "sha256": "0" * 64}


@pytest.mark.parametrize("entries, error", [
    ([{**INDEXED, "path": "m\udcff/1/model.onnx"}], "is not valid UTF-8"),  # JSON escapes a lone surrogate
    ([{**INDEXED, "path": "m\n/1/model.onnx"}], "contains a control character"),
    ([{**INDEXED, "path": "m/1/" + "f" * 256}], "has a component of 256 bytes"),
    ([INDEXED, {**INDEXED, "sha256": "1" * 64}], "path 'm/1/model.onnx' is listed twice"),
], ids=["not-utf8", "control", "too-long", "twice"])
def test_an_index_naming_a_file_the_mirror_cannot_hold_is_refused(entries, error):
    doc = {"format": "fleetserve-repository-index", "version": 1, "files": entries}
    with pytest.raises(RemoteStoreError, match=error):
        parse_index(json.dumps(doc).encode(), "http://h/index.json")


def test_a_missing_bucket_is_an_error_not_an_empty_repository(s3: S3Server, tmp_path: Path):
    s3.filesystem().mkdir("doomed")
    model = write_add_constant_model(tmp_path / "m.onnx").read_bytes()
    s3.filesystem().pipe_file("doomed/r/add_one/1/model.onnx", model)
    mirror = RepositoryMirror(MirrorConfig("s3://doomed/r", tmp_path / "cache", s3.endpoint_url))
    assert mirror.sync().downloaded == ("add_one/1/model.onnx",)
    s3.filesystem().rm("doomed", recursive=True)
    with pytest.raises(RemoteStoreError, match="cannot list s3://doomed/r: .*bucket does not exist"):
        mirror.sync()
    assert mirror.has_copy() and (mirror.root / "add_one/1/model.onnx").is_file()  # the copy keeps serving


def test_a_file_and_a_folder_of_one_name_fail_that_version_only(s3: S3Server, tmp_path: Path):
    s3.upload(repository(tmp_path / "repo"), "h")
    s3.put(b"stray", "h/dense/1")  # a key "dense/1" beside "dense/1/model.onnx"
    mirror = mirror_of(s3, "h", tmp_path / "cache")
    report = mirror.sync()
    assert "a folder of its path is listed as a file" in report.failures["dense"].versions[1]
    assert "add_one" in report.updated and (mirror.root / "add_one/1/model.onnx").is_file()


def test_a_download_longer_than_its_index_entry_is_stopped(tmp_path: Path):
    local = repository(tmp_path / "repo")
    write_index(local)
    with (local / "dense/1/model.onnx").open("r+b") as model:
        model.truncate(64 << 20)  # the server now sends 64 MiB where the index promises under 1 KiB
    with HttpServer(local) as http:
        mirror = RepositoryMirror(MirrorConfig(http.url, tmp_path / "cache"))
        reason = mirror.sync().failures["dense"].versions[1]
    assert "dense/1/model.onnx: size mismatch: the index says" in reason
    assert "the server sent more; the download was stopped there" in reason

    (local / "add_one/1/model.onnx").unlink()  # listed in the index, gone from the server (404)
    with HttpServer(local) as http:
        mirror = RepositoryMirror(MirrorConfig(http.url, tmp_path / "cache2"))
        reason = mirror.sync().failures["add_one"].versions[1]
    assert reason.endswith("add_one/1/model.onnx: not found (listed, but the server has no such file)")


def test_an_unreachable_store_raises_and_leaves_the_mirror_alone(tmp_path: Path):
    mirror = RepositoryMirror(MirrorConfig("s3://models/x", tmp_path / "cache", "http://127.0.0.1:9"))
    with pytest.raises(RemoteStoreError, match="cannot read s3://models/x/index.json: Could not connect"):
        mirror.sync()
    assert not mirror.has_copy()


def test_http_repository_needs_an_index_and_is_verified_by_sha256(tmp_path: Path):
    local = repository(tmp_path / "repo")
    with HttpServer(local) as http:
        mirror = RepositoryMirror(MirrorConfig(http.url + "/", tmp_path / "cache"))
        with pytest.raises(RemoteStoreError, match="index.json does not exist.*python -m model_store.remote index"):
            mirror.sync()
        write_index(local)
        report = mirror.sync()
        assert sorted(report.downloaded) == ["add_one/1/model.onnx", "add_one/config.pbtxt", "dense/1/model.onnx"]
        write_dense_model(local / "dense" / "2")
        write_index(local)
        model = local / "dense/2/model.onnx"
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF  # same size, other bytes: only the hash can tell
        model.write_bytes(bytes(data))
        report = mirror.sync()
        reason = report.failures["dense"].versions[2]
        assert reason.startswith(f"version 2 could not be downloaded: {http.url}/dense/2/model.onnx: sha256 mismatch")
        assert sorted(MirroredRepository(mirror).read("dense").versions) == [1]


def test_an_index_cannot_write_outside_the_mirror(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    doc = {"format": "fleetserve-repository-index", "version": 1,
           "files": [{"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}]}
    (served / "index.json").write_text(json.dumps(doc))
    with HttpServer(served) as http:
        mirror = RepositoryMirror(MirrorConfig(http.url, tmp_path / "cache"))
        with pytest.raises(RemoteStoreError, match="is not a relative"):
            mirror.sync()
        doc["files"] = [{"path": "m/../../escape", "size": 1, "sha256": "0" * 64}]
        (served / "index.json").write_text(json.dumps(doc))
        assert mirror.sync().downloaded == ()  # a '..' component is hidden: never fetched
    assert not (tmp_path / "escape").exists()


def test_two_mirrors_sharing_a_cache_take_turns(s3: S3Server, tmp_path: Path):
    s3.upload(repository(tmp_path / "repo"), "f")
    mirrors = [mirror_of(s3, "f", tmp_path / "cache") for _ in range(2)]
    reports: list[object] = []
    threads = [threading.Thread(target=lambda m=m: reports.append(m.sync())) for m in mirrors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    downloads = sorted(len(r.downloaded) for r in reports)  # type: ignore[attr-defined]
    assert downloads == [0, 3]  # the second waited for the lock, then found everything in place


def test_mirror_config_rejects_what_it_cannot_serve(tmp_path: Path):
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        MirrorConfig("gs://bucket/x", tmp_path)
    with pytest.raises(ValueError, match="names no bucket"):
        MirrorConfig("s3:///x", tmp_path)
    with pytest.raises(ValueError, match="applies to s3:// model repositories only"):
        MirrorConfig("https://host/x", tmp_path, "http://127.0.0.1:9000")
    a, b = MirrorConfig("s3://bucket/x/", tmp_path), MirrorConfig("s3://bucket/y", tmp_path)
    assert a.url == "s3://bucket/x" and a.root != b.root and a.root.parent == tmp_path


def test_the_index_command_writes_what_the_reader_expects(tmp_path: Path):
    local = repository(tmp_path / "repo")
    (local / "dense" / ".DS_Store").write_text("hidden")
    result = subprocess.run([sys.executable, "-m", "model_store.remote", "index", str(local)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {local / 'index.json'}: 3 files"
    files = {f["path"]: f for f in json.loads((local / "index.json").read_text())["files"]}
    assert set(files) == {"add_one/1/model.onnx", "add_one/config.pbtxt", "dense/1/model.onnx"}
    assert files["dense/1/model.onnx"]["size"] == (local / "dense/1/model.onnx").stat().st_size

"""ModelRepository on a real folder: listing, names, versions, configs and fingerprints."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import pytest

from model_store.complete import ModelTensor
from model_store.config import VersionPolicy
from model_store.examples import REPOSITORY
from model_store.repository import ModelRepository
from model_store.testing import ModelSpec, write_config, write_dense_model, write_model_repository
from ops.errors import ConfigError, ModelNotFound

Signature = tuple[list[ModelTensor], list[ModelTensor]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A repository with models a, b (versions 1, 3) and c, plus things that are not models."""
    repo = tmp_path / "repo"
    write_model_repository(
        repo,
        {
            "a": ModelSpec(write_dense_model),
            "b": ModelSpec(write_dense_model, versions=(1, 3)),
            "c": ModelSpec(write_dense_model, config="max_batch_size: 0"),
        },
    )
    (repo / ".hidden").mkdir()
    (repo / "README.md").write_text("not a model")
    return repo


def touch(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_model_names_lists_model_folders_only(root: Path) -> None:
    assert ModelRepository(root).model_names() == ["a", "b", "c"]


def test_links_are_listed_only_when_they_stay_inside_the_repository(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_dense_model(outside / "1")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "a", target_is_directory=True)
    repo = ModelRepository(root)

    assert repo.model_names() == ["a", "alias", "b", "c"]
    with pytest.raises(ModelNotFound, match="a link that leads outside the repository"):
        repo.read("escape")
    assert repo.read("alias").versions == {1: root / "alias" / "1" / "model.onnx"}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../etc", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("/etc", "path separator"),
        (".hidden", "starts with a dot"),
        ("..", "starts with a dot"),
        (".", "starts with a dot"),
        ("", "is empty"),
        ("a\0b", "NUL"),
        ("a\nb", "control character"),  # would start a forged line in a text log
        ("a\x7fb", "control character"),
        pytest.param("x" * 256, "is 256 bytes long; a folder name holds at most 255", id="256-ascii"),  # no OSError
        pytest.param("\u00e9" * 128, "is 256 bytes long", id="256-bytes-of-two-byte-characters"),
        ("bad\udcffname", "not valid UTF-8"),  # how Python names a folder whose name is other bytes
    ],
)
def test_names_that_are_not_one_folder_of_the_repository_are_refused(root: Path, name: str, reason: str) -> None:
    repo = ModelRepository(root)
    for call in (repo.validate_name, repo.read, repo.fingerprint_of):
        with pytest.raises(ModelNotFound) as caught:
            call(name)
        assert f"model name {name!r} is not valid" in str(caught.value)
        assert reason in str(caught.value)
        assert "a folder directly in the model repository" in str(caught.value)


def test_folders_no_client_could_name_are_not_listed(root: Path) -> None:
    write_dense_model(root / os.fsdecode(b"bad\xffname") / "1")  # not UTF-8: no gRPC or JSON string holds it
    write_dense_model(root / "two\nlines" / "1")
    write_dense_model(root / ("\u00e9" * 127) / "1")  # 254 bytes: a name like any other

    assert ModelRepository(root).model_names() == ["a", "b", "c", "\u00e9" * 127]


def test_an_unknown_model_names_the_repository_and_the_models_present(root: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        ModelRepository(root).read("x")

    assert str(caught.value) == f"model 'x' is not in the repository at {root}; models present: a, b, c"


def test_a_missing_repository_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model repository .*nowhere cannot be read"):
        ModelRepository(tmp_path / "nowhere").model_names()


def test_read_finds_versions_and_reports_folders_without_the_model_file(root: Path) -> None:
    (root / "b" / "2").mkdir()  # no model file
    (root / "b" / "latest").mkdir()  # not a version
    (root / "b" / "01").mkdir()  # not canonical: would clash with 1
    (root / "b" / "4" / "model.onnx").mkdir(parents=True)  # a folder, not a file

    source = ModelRepository(root).read("b")

    assert source.name == "b"
    assert source.path == root / "b"
    assert source.config_message is None
    assert source.config_source == f"{root / 'b'} (no config.pbtxt)"
    assert source.versions == {1: root / "b" / "1" / "model.onnx", 3: root / "b" / "3" / "model.onnx"}
    assert sorted(source.missing) == [2, 4]
    assert "version 2 has no model file" in source.missing[2]
    assert str(root / "b" / "2" / "model.onnx") in source.missing[2]


def test_version_folders_are_named_by_positive_integers_as_tritons(root: Path) -> None:
    for folder in ("0", "00", "01", "1.0", "-1", "+2", " 2", "\uff12", "2"):  # "\uff12": a full-width 2
        write_dense_model(root / "b" / folder)

    source = ModelRepository(root).read("b")

    assert sorted(source.versions) == [1, 2, 3] and source.missing == {}


def test_the_config_names_the_model_file(root: Path) -> None:
    write_config(root / "a", 'default_model_filename: "dense.onnx"')
    write_dense_model(root / "a" / "2" / "dense.onnx")

    source = ModelRepository(root).read("a")

    assert source.versions == {2: root / "a" / "2" / "dense.onnx"}
    assert list(source.missing) == [1]


@pytest.mark.parametrize(
    ("policy", "expected", "served"),
    [
        ("", VersionPolicy(), [7]),
        ("version_policy { all { } }", VersionPolicy(kind="all"), [1, 3, 7]),
        ("version_policy { latest { num_versions: 2 } }", VersionPolicy(kind="latest", num_versions=2), [3, 7]),
        ("version_policy { specific { versions: [ 3, 1 ] } }", VersionPolicy(kind="specific", versions=(1, 3)), [1, 3]),
    ],
)
def test_the_version_policy_selects_among_the_versions_present(
    root: Path, policy: str, expected: VersionPolicy, served: list[int]
) -> None:
    write_dense_model(root / "b" / "7")
    write_config(root / "b", policy)

    source = ModelRepository(root).read("b")

    assert source.version_policy() == expected
    assert source.version_policy().select(sorted(source.versions)) == served


def test_config_errors_name_the_config_file(root: Path) -> None:
    write_config(root / "a", "max_batch_size: 8\nmax_batch_sise: 8")
    with pytest.raises(ConfigError, match=rf'{root / "a" / "config.pbtxt"}:2:1: unknown field "max_batch_sise"'):
        ModelRepository(root).read("a")


def test_a_bad_version_policy_fails_the_read(root: Path) -> None:
    write_config(root / "a", "version_policy { latest { num_versions: 0 } }")
    with pytest.raises(ConfigError, match="version_policy.latest.num_versions: must be at least 1"):
        ModelRepository(root).read("a")


def test_a_config_that_is_not_utf8_is_a_config_error(root: Path) -> None:
    (root / "a" / "config.pbtxt").write_bytes(b'name: "\xff"')
    with pytest.raises(ConfigError, match="cannot be read as UTF-8 text"):
        ModelRepository(root).read("a")


@pytest.mark.parametrize(
    "make",
    [lambda path: path.mkdir(), lambda path: path.symlink_to(path.parent / "gone.pbtxt")],
    ids=["folder", "dangling-link"],
)
def test_a_config_pbtxt_that_is_not_a_file_is_a_config_error(root: Path, make: Callable[[Path], object]) -> None:
    # e.g. a ConfigMap mounted at config.pbtxt without subPath: not read as "no config", which would serve the
    # model completed from the ONNX file instead of as configured
    config = root / "a" / "config.pbtxt"
    make(config)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: is not a file (a folder, or a link to nothing)")):
        ModelRepository(root).read("a")
    assert ModelRepository(root).read("b").config_message is None  # the other models read as before


@pytest.mark.parametrize(
    "raw",
    [b"\xef\xbb\xbfmax_batch_size: 0\n", b"# written on Windows\r\nmax_batch_size: 0\r\n"],
    ids=["byte-order-mark", "crlf"],
)
def test_a_byte_order_mark_and_crlf_line_endings_read_as_written(
    root: Path, raw: bytes, ort_signature: Callable[[Path], Signature]
) -> None:
    (root / "a" / "config.pbtxt").write_bytes(raw)
    source = ModelRepository(root).read("a")

    assert source.build_config(*ort_signature(source.versions[1])).max_batch_size == 0  # stated, so no batching


def test_an_explicit_max_batch_size_0_reaches_build_config(
    root: Path, ort_signature: Callable[[Path], Signature]
) -> None:
    repo = ModelRepository(root)
    batching, plain = repo.read("a"), repo.read("c")

    assert batching.build_config(*ort_signature(batching.versions[1])).max_batch_size > 0
    config = plain.build_config(*ort_signature(plain.versions[1]))
    assert (config.max_batch_size, config.inputs[0].dims) == (0, (-1, 16))


@pytest.mark.parametrize("name", ["add_one", "dense", "mlp", "simple"])
def test_every_example_model_reads_and_builds(name: str, ort_signature: Callable[[Path], Signature]) -> None:
    source = ModelRepository(REPOSITORY).read(name)

    config = source.build_config(*ort_signature(source.versions[1]))

    assert config.name == name
    assert config.max_batch_size > 0


# ---- fingerprints -------------------------------------------------------------------------------


def test_the_fingerprint_is_stable_and_matches_fingerprint_of(root: Path) -> None:
    repo = ModelRepository(root)

    assert repo.read("b").fingerprint == repo.read("b").fingerprint == repo.fingerprint_of("b")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda m: touch(m / "1" / "model.onnx", 1_000_000_000), id="model-file-mtime"),
        pytest.param(lambda m: (m / "1" / "model.onnx").write_bytes(b"other"), id="model-file-rewritten"),
        pytest.param(lambda m: (m / "1" / "model.onnx_data").write_bytes(b"w"), id="external-data-added"),
        pytest.param(lambda m: write_config(m, "max_batch_size: 2"), id="config-added"),
        pytest.param(lambda m: write_dense_model(m / "5"), id="version-added"),
        pytest.param(lambda m: (m / "6").mkdir(), id="empty-version-folder-added"),
        pytest.param(lambda m: (m / "3" / "model.onnx").unlink(), id="model-file-removed"),
        pytest.param(lambda m: (m / "warmup").mkdir() or (m / "warmup" / "x.bin").write_bytes(b"1"),
                     id="warmup-data-added"),
    ],
)
def test_the_fingerprint_changes_when_a_file_changes(root: Path, change: Callable[[Path], object]) -> None:
    repo = ModelRepository(root)
    before = repo.fingerprint_of("b")

    change(root / "b")

    assert repo.fingerprint_of("b") != before
    assert repo.read("b").fingerprint != before


def test_hidden_files_and_other_folders_do_not_change_the_fingerprint(root: Path) -> None:
    repo = ModelRepository(root)
    before = repo.fingerprint_of("b")

    (root / "b" / "1" / ".model.onnx.swp").write_bytes(b"editor")
    (root / "b" / "notes").mkdir()
    (root / "b" / "README").write_text("hello")

    assert repo.fingerprint_of("b") == before


def test_version_fingerprints_change_with_their_own_files_and_with_the_config(root: Path) -> None:
    repo = ModelRepository(root)
    first = repo.read("b")

    touch(root / "b" / "3" / "model.onnx", 2_000_000_000)
    second = repo.read("b")
    write_config(root / "b", "max_batch_size: 4")
    third = repo.read("b")

    assert second.version_fingerprint(1) == first.version_fingerprint(1)
    assert second.version_fingerprint(3) != first.version_fingerprint(3)
    assert third.version_fingerprint(1) != second.version_fingerprint(1)
    assert third.version_fingerprint(3) != second.version_fingerprint(3)
    (root / "b" / "warmup").mkdir()
    (root / "b" / "warmup" / "tokens.bin").write_bytes(b"\0" * 8)  # model_warmup data: every version reads it
    fourth = repo.read("b")
    assert all(fourth.version_fingerprint(v) != third.version_fingerprint(v) for v in (1, 3))

"""Label files as Triton reads them: one label per line, nothing stripped; one that cannot be read fails the load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model_store.config import ModelConfig, TensorSpec
from model_store.datatypes import BY_NAME
from model_store.labels import read_labels, split_labels
from ops.errors import ConfigError


@pytest.mark.parametrize("data, labels", [
    (b"cat\ndog\n", (b"cat", b"dog")),
    (b"cat\ndog", (b"cat", b"dog")),  # no final newline
    (b"cat\n\nfish\n", (b"cat", b"", b"fish")),  # an empty line: class 1 has no label
    (b"cat\r\ndog\r\n", (b"cat\r", b"dog\r")),  # split at newlines only, as Triton's getline splits
    (b" a b \n\n\n", (b" a b ", b"", b"")),
    (b"\n", (b"",)),
    (b"", ()),
    ("caf\u00e9\n".encode(), ("caf\u00e9".encode(),)),
])
def test_one_label_per_line(data, labels):
    assert split_labels(data) == labels


def config(**files: str) -> ModelConfig:
    inputs = (TensorSpec("INPUT0", BY_NAME["FP32"], (4,)),)
    outputs = tuple(TensorSpec(name, BY_NAME["FP32"], (4,), label_filename=file) for name, file in files.items())
    return ModelConfig("m", 8, inputs, outputs)


def test_each_output_gets_its_own_file_and_one_without_gets_none(tmp_path: Path):
    (tmp_path / "labels.txt").write_bytes(b"cat\ndog\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.txt").write_bytes(b"x\n\ny")
    assert read_labels(tmp_path, config(A="labels.txt", B="sub/other.txt", C="")) == {
        "A": (b"cat", b"dog"), "B": (b"x", b"", b"y")}


@pytest.mark.parametrize("name, problem", [
    ("gone.txt", "cannot be read from the model folder {folder}: No such file or directory; add the file (one "
                 "label per line, line i naming class i) or remove label_filename"),
    ("sub", "cannot be read from the model folder {folder}: Is a directory; add the file (one label per line, line "
            "i naming class i) or remove label_filename"),
    ("../labels.txt", "leads outside the model folder {folder}; the label file must be in the model folder, beside "
                      "config.pbtxt"),
    ("/etc/hostname", "leads outside the model folder {folder}; the label file must be in the model folder, beside "
                      "config.pbtxt"),
    ("link.txt", "leads outside the model folder {folder}; the label file must be in the model folder, beside "
                 "config.pbtxt"),
    (".", "cannot be read from the model folder {folder}: Is a directory; add the file (one label per line, line "
          "i naming class i) or remove label_filename"),
])
def test_a_file_that_cannot_be_read_from_the_model_folder_fails_the_load(tmp_path: Path, name, problem):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "sub").mkdir()
    (tmp_path / "labels.txt").write_bytes(b"cat\n")
    os.symlink(tmp_path / "labels.txt", folder / "link.txt")
    with pytest.raises(ConfigError) as err:
        read_labels(folder, config(OUTPUT0=name))
    assert err.value.message == f"model 'm' output 'OUTPUT0': label_filename {name!r} " + problem.format(folder=folder)

"""Class labels: the files that outputs' ``label_filename`` names, read once when a model version loads.

As in Triton, the file lies in the model folder (beside config.pbtxt) and line i names class i.
The file is split at each newline and nothing is stripped, so a CRLF file keeps a trailing
carriage return in each label. An empty line gives its class no label, and so does a class past
the last line. A label file that is missing, unreadable or outside the model folder fails the load,
as it does in Triton: a model whose classification would silently lose its labels is not served.

Labels stay bytes (they become part of BYTES elements). Imports model_store.config and ops.errors;
never server or a transport.
"""

from __future__ import annotations

from pathlib import Path

from model_store.config import ModelConfig
from ops.errors import ConfigError

Labels = dict[str, tuple[bytes, ...]]  # output name -> its labels, by class index


def split_labels(data: bytes) -> tuple[bytes, ...]:
    """One label per line; a final newline ends the last line rather than starting an empty one."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return tuple(lines)


def read_labels(model_folder: Path, config: ModelConfig) -> Labels:
    """The labels of every output that names a label file; outputs without one are left out.

    Blocking (reads files): call it from the load's worker thread. Raises ``ConfigError`` naming the
    model, the output and the file when the file is outside ``model_folder``, missing or unreadable."""
    labels: Labels = {}
    folder = model_folder.resolve()
    for spec in config.outputs:
        if not spec.label_filename:
            continue
        where = f"model '{config.name}' output '{spec.name}': label_filename {spec.label_filename!r}"
        path = (model_folder / spec.label_filename).resolve()
        if not path.is_relative_to(folder):
            raise ConfigError(f"{where} leads outside the model folder {model_folder}; the label file must be "
                              "in the model folder, beside config.pbtxt", model=config.name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{where} cannot be read from the model folder {model_folder}: {exc.strerror or exc}; "
                "add the file (one label per line, line i naming class i) or remove label_filename",
                model=config.name,
            ) from exc
        labels[spec.name] = split_labels(data)
    return labels

"""The bundled example model repository and the script that (re)builds it.

``repository/`` holds dense, simple, add_one and mlp, written by
``python -m model_store.examples.build``; see ``build.py`` for what each is.
``REPOSITORY`` is its path, for tests and for ``fleetserve --model-repository``.
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY: Path = Path(__file__).resolve().parent / "repository"

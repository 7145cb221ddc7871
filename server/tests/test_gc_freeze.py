"""A started server keeps its long-lived objects out of the cyclic collector's full collections.

Under load, full collections over everything the server had built at start-up (modules,
descriptors, sessions) stalled the event loop for about 55 ms every few seconds, enough to push a
request in a hundred past a latency objective. Run in a fresh interpreter: the check is about what
``App.start`` does, not about what earlier tests froze.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from model_store.testing import ModelSpec, write_dense_model, write_model_repository


def test_start_freezes_what_start_up_built(tmp_path: Path):
    repo = write_model_repository(tmp_path, {"dense": ModelSpec(write_dense_model)})
    script = textwrap.dedent(f"""
        import asyncio, gc
        from pathlib import Path
        from server.app import App
        from server.settings import Settings

        async def main():
            app = App(Settings(model_repository=Path({str(repo)!r}), host="127.0.0.1",
                               grpc_port=0, http_port=0, metrics_port=0))
            before = gc.get_freeze_count()
            await app.start()
            after = gc.get_freeze_count()
            tracked = len(gc.get_objects())
            await app.stop()
            print(before, after, tracked)

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stdout + result.stderr
    before, after, tracked = map(int, result.stdout.split())
    assert before == 0 and after > 50_000, (before, after)
    assert tracked < after / 10  # what a full collection still walks is a small fraction

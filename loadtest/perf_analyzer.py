"""Triton's perf_analyzer, the second load generator: install it, find it, run one load, read its CSV.

perf_analyzer is C++, so it spends far less CPU per request than the Python harness: on a machine
where the load generator shares the cores with the server, it leaves more of them to the server.
``fleetserve bench`` drives its side-by-side loads with both.

Install (no root, about 50 MB, no GPU needed)::

    python -m loadtest.perf_analyzer install      # into ~/.cache/fleetserve/perf_analyzer

That takes the binary from PyPI's ``tritonclient`` wheel, which carried perf_analyzer up to 2.60;
2.51 is the newest whose binary runs on Debian 12's glibc 2.36 (2.52-2.60 need glibc 2.38). The
binary loads ``libcudart.so.12`` even on the CPU, so NVIDIA's CUDA runtime wheel goes beside it
(the library only, no driver). A ``perf_analyzer`` on PATH, such as the one in Triton's SDK
container, is used first. The installed copy is kept apart from the environment's own
``tritonclient``, which stays at its newer version.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

WHEELS = ("tritonclient==2.51.0", "nvidia-cuda-runtime-cu12>=12.1,<13")
HOME_ENV = "FLEETSERVE_PERF_ANALYZER_HOME"
INSTALL_HINT = "install it with: python -m loadtest.perf_analyzer install"


def default_home() -> Path:
    """Where ``install`` puts perf_analyzer: $FLEETSERVE_PERF_ANALYZER_HOME, else ~/.cache/fleetserve/perf_analyzer."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "fleetserve" / "perf_analyzer"


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, or a run of it failed (the message carries its output's tail)."""


@dataclass(frozen=True)
class PerfAnalyzer:
    path: Path
    library_dir: Path | None  # holds libcudart.so.12, for the dynamic loader

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.library_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.library_dir), env.get("LD_LIBRARY_PATH")) if p)
        return env

    def version(self) -> str:
        done = subprocess.run([str(self.path), "--version"], env=self.env(), capture_output=True, text=True, timeout=30)
        return done.stdout.strip() or done.stderr.strip()


def locate(home: Path | None = None) -> PerfAnalyzer | None:
    """perf_analyzer on PATH, else the copy ``install`` put in ``home``; None when neither is there."""
    on_path = shutil.which("perf_analyzer")
    if on_path:
        return PerfAnalyzer(Path(on_path), None)
    home = home or default_home()
    binary = home / "bin" / "perf_analyzer"
    if not binary.is_file():
        return None
    libs = home / "nvidia" / "cuda_runtime" / "lib"
    return PerfAnalyzer(binary, libs if libs.is_dir() else None)


def require(home: Path | None = None) -> PerfAnalyzer:
    found = locate(home)
    if found is None:
        raise PerfAnalyzerError(f"perf_analyzer is not on PATH nor in {home or default_home()}; {INSTALL_HINT}")
    return found


def install(home: Path | None = None) -> PerfAnalyzer:
    """pip-install the wheels into ``home`` (kept apart from the environment), unless a working copy is there."""
    home = home or default_home()
    found = locate(home)
    if found is not None and found.path.parent == home / "bin" and _runs(found):
        return found
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                    str(home), *WHEELS], check=True)
    installed = PerfAnalyzer(home / "bin" / "perf_analyzer", home / "nvidia" / "cuda_runtime" / "lib")
    if not _runs(installed):
        raise PerfAnalyzerError(f"{installed.path} was installed but does not run: {installed.version()}")
    return installed


def _runs(pa: PerfAnalyzer) -> bool:
    try:
        return "Perf Analyzer Version" in pa.version()
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass(frozen=True)
class PaResult:
    """One perf_analyzer measurement (its CSV row); latencies in milliseconds."""

    concurrency: int
    throughput: float  # inferences/s: rows/s, so requests/s times the batch size
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    server_queue_us: float | None  # from the server's statistics, when it has them
    server_compute_infer_us: float | None


def parse_csv(text: str) -> PaResult:
    """The single row of ``perf_analyzer -f FILE`` for one concurrency."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1:
        raise PerfAnalyzerError(f"expected one measurement in perf_analyzer's CSV, found {len(rows)}:\n{text}")
    row = rows[0]

    def us(column: str) -> float | None:
        value = row.get(column)
        return float(value) if value not in (None, "") else None

    return PaResult(
        concurrency=int(row["Concurrency"]), throughput=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000, p90_ms=float(row["p90 latency"]) / 1000,
        p95_ms=float(row["p95 latency"]) / 1000, p99_ms=float(row["p99 latency"]) / 1000,
        server_queue_us=us("Server Queue"), server_compute_infer_us=us("Server Compute Infer"),
    )


def command(pa: PerfAnalyzer, address: str, model: str, *, concurrency: int | None, streaming: bool = False,
            batch: int = 1, protocol: str = "grpc", window_ms: int = 2000, trials: int = 3,
            stability_percent: int = 100, csv_path: Path | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The perf_analyzer command line for one closed-loop load (asynchronous, as the bench's targets use).

    The defaults take exactly ``trials`` windows: a stability of 100% accepts the first three, which
    keeps the run bounded; perf_analyzer reports their average. ``extra`` options go last; with
    ``concurrency=None`` they choose the load (perf_analyzer takes one mode: ``--request-rate-range`` ...)."""
    args = [str(pa.path), "-m", model, "-u", address, "-i", protocol, "--async", "-b", str(batch),
            "--measurement-interval", str(window_ms), "--max-trials", str(max(trials, 3)),
            "--stability-percentage", str(stability_percent)]
    if concurrency is not None:
        args += ["--concurrency-range", str(concurrency)]
    if streaming:
        args.append("--streaming")
    if csv_path is not None:
        args += ["-f", str(csv_path)]
    return args + list(extra)


def run(pa: PerfAnalyzer, address: str, model: str, *, concurrency: int, streaming: bool = False, batch: int = 1,
        protocol: str = "grpc", window_ms: int = 2000, trials: int = 3, timeout_s: float = 120.0,
        extra: Sequence[str] = (), stability_percent: int = 100) -> PaResult:
    """One load against ``address``; raises ``PerfAnalyzerError`` with perf_analyzer's output when it fails.

    ``stability_percent``: how far a window's throughput may be from the others' and still count; a test that
    checks what happens, not how fast, raises it, so a busy machine cannot fail the run for unstable windows."""
    return parse_csv(run_csv(pa, address, model, concurrency=concurrency, streaming=streaming, batch=batch,
                             protocol=protocol, window_ms=window_ms, trials=trials, timeout_s=timeout_s, extra=extra,
                             stability_percent=stability_percent))


def run_csv(pa: PerfAnalyzer, address: str, model: str, *, concurrency: int | None, streaming: bool = False,
            batch: int = 1, protocol: str = "grpc", window_ms: int = 2000, trials: int = 3, timeout_s: float = 120.0,
            extra: Sequence[str] = (), stability_percent: int = 100) -> str:
    """As ``run``, but the text of perf_analyzer's CSV, every column it wrote (``--verbose-csv`` adds some)."""
    with tempfile.TemporaryDirectory(prefix="fleetserve-pa-") as tmp:
        out = Path(tmp) / "pa.csv"
        args = command(pa, address, model, concurrency=concurrency, streaming=streaming, batch=batch,
                       protocol=protocol, window_ms=window_ms, trials=trials, stability_percent=stability_percent,
                       csv_path=out, extra=extra)
        try:
            done = subprocess.run(args, env=pa.env(), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerError(f"perf_analyzer ran past {timeout_s:.0f} s: {' '.join(args)}") from exc
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
            raise PerfAnalyzerError(f"perf_analyzer exited with {done.returncode}: {' '.join(args)}\n{tail}")
        return out.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.perf_analyzer", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("install", "where"),
                        help="install: fetch perf_analyzer (skipped when a working copy is there); where: print its path")
    parser.add_argument("--home", type=Path, default=None, help=f"install folder (default ${HOME_ENV} or "
                                                                "~/.cache/fleetserve/perf_analyzer)")
    args = parser.parse_args(argv)
    try:
        pa = install(args.home) if args.action == "install" else require(args.home)
    except (PerfAnalyzerError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{pa.path} ({pa.version()})")
    if pa.library_dir is not None:
        print(f"run it with LD_LIBRARY_PATH={pa.library_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

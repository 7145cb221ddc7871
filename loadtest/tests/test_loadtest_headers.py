"""``fleetserve loadtest --header``: every call carries it (metadata, statistics and inference, each transport,
each load-generator process), so a server whose APIs are restricted (Triton's --grpc-restricted-protocol,
--http-restricted-api) can be load tested."""

from __future__ import annotations

import json
import shutil

import pytest

from loadtest.cli import main
from model_store.examples import REPOSITORY
from server.testing import ServerProcess

QUICK_ARGS = ["--warmup-s", "0.2", "--window-s", "0.3", "--stable-windows", "2", "--tolerance", "0.5",
              "--max-duration-s", "1.5", "--quiet"]
GROUPS = "inference,metadata,statistics:api-key=k:1"


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    with ServerProcess(root, f"--grpc-restricted-protocol={GROUPS}", f"--http-restricted-api={GROUPS}") as server:
        yield server


def header(transport: str) -> str:
    return "api-key:k:1" if transport.startswith("http") else "triton-grpc-protocol-api-key:k:1"


@pytest.mark.parametrize("transport, processes", [("unary", 1), ("stream", 1), ("http", 1), ("unary", 2)])
def test_every_call_carries_the_header(restricted, tmp_path, transport: str, processes: int) -> None:
    target = restricted.http_address if transport.startswith("http") else restricted.grpc_address
    assert main(["loadtest", "--target", target, "--transport", transport, "--model", "add_one", "--concurrency", "4",
                 "--processes", str(processes), "--header", header(transport), *QUICK_ARGS, "--out", str(tmp_path),
                 "--name", "run", "--assert", "errors<=0"]) == 0
    point = json.loads((tmp_path / "run.json").read_text())["points"][0]
    assert point["ok"] > 0 and point["errors"] == {}
    assert point["batch_sizes"]  # read from the restricted statistics API


@pytest.mark.parametrize("transport", ["unary", "http"])
def test_without_it_the_run_is_refused_in_one_line(restricted, capsys, transport: str) -> None:
    target = restricted.http_address if transport.startswith("http") else restricted.grpc_address
    assert main(["loadtest", "--target", target, "--transport", transport, "--model", "add_one", "--concurrency",
                 "1", *QUICK_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "restricted, expecting header" in err


def test_a_header_that_does_not_parse_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["loadtest", "--target", "127.0.0.1:1", "--model", "m", "--header", "no value", "--quiet"])
    assert "--header takes NAME:VALUE" in capsys.readouterr().err

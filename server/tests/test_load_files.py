"""Loading a model from files sent with the load request (Triton's ``file:<path>`` load parameters).

Real servers in explicit mode and tritonclient's ``load_model(name, config=..., files={...})`` over gRPC
and REST: a model absent from the repository serves from the files; files replace the repository's
folder of a model until a plain load; bad paths, files without ``config`` and values of the wrong kind
are refused naming the parameter; the temporary folder is removed once nothing loaded from it serves
(unload, a later load, shutdown); fleet mode refuses them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc

from model_store.sent_files import OWNER_FILE
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from ops.redis_testing import RedisServer
from server.fleet_testing import fleet_args
from server.testing import ServerProcess

CONFIG = json.dumps({"max_batch_size": 8})


def add_model_bytes(tmp: Path, constant: float) -> bytes:
    """An ONNX model adding ``constant`` to INPUT0 (FP32 [batch, 16])."""
    return write_add_constant_model(tmp / f"add_{constant}" / "model.onnx", constant=constant).read_bytes()


def answer(client, name: str, version: str = "") -> float:
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    inp = module.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
    return float(client.infer(name, [inp], model_version=version).as_numpy("OUTPUT0")[0, 0])


def sent_folders(scratch: Path) -> list[Path]:
    return sorted(scratch.glob("fleetserve-load-files-*"))


def start_server(repo: Path, scratch: Path, *args: str) -> ServerProcess:
    """A server whose temporary folders are made under ``scratch`` (TMPDIR), so tests can see them."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(scratch))
    try:
        return ServerProcess(repo, "--model-control-mode", "explicit", *args).start()
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scratch")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, scratch: Path):
    repo = write_model_repository(tmp_path_factory.mktemp("repo"), {
        # version N adds N: which version answered shows in the output
        "add": ModelSpec(lambda d: write_add_constant_model(d, constant=float(d.name)), versions=(1, 2)),
    })
    proc = start_server(repo, scratch, "--load-model", "add")
    yield proc
    proc.stop()


@pytest.fixture(params=["grpc", "http"])
def client(request: pytest.FixtureRequest, server: ServerProcess, scratch: Path):
    made = (tc.InferenceServerClient(server.grpc_address) if request.param == "grpc"
            else th.InferenceServerClient(server.http_address))
    yield made
    made.load_model("add")  # back to the repository's folder for the next test
    for name in ("sent",):
        try:
            made.unload_model(name)
        except Exception:  # not loaded by this test
            pass
    made.close()
    assert sent_folders(scratch) == []


def is_grpc(client) -> bool:
    return isinstance(client, tc.InferenceServerClient)


def test_a_model_absent_from_the_repository_serves_from_files_until_unloaded(client, scratch: Path, tmp_path: Path):
    client.load_model("sent", config=json.dumps({"name": "sent", "max_batch_size": 8}),
                      files={"file:1/model.onnx": add_model_bytes(tmp_path, 5.0)})
    assert client.is_model_ready("sent")
    assert answer(client, "sent") == 5.0
    config = (client.get_model_config("sent", as_json=True)["config"] if is_grpc(client)
              else client.get_model_config("sent"))
    assert config["max_batch_size"] == 8
    [folder] = sent_folders(scratch)
    assert (folder / "sent" / "1" / "model.onnx").read_bytes() == add_model_bytes(tmp_path, 5.0)
    assert folder.stat().st_mode & 0o077 == 0  # private to the server's user

    client.unload_model("sent")
    assert not client.is_model_ready("sent")
    assert sent_folders(scratch) == []


def test_files_replace_the_repository_folder_until_a_plain_load(client, scratch: Path, tmp_path: Path):
    assert answer(client, "add") == 2.0
    client.load_model("add", config=CONFIG, files={"file:3/model.onnx": add_model_bytes(tmp_path, 7.0)})
    assert answer(client, "add") == 7.0
    assert client.is_model_ready("add", "3")
    assert not client.is_model_ready("add", "1") and not client.is_model_ready("add", "2")  # the files are all
    [first] = sent_folders(scratch)

    # a later load with other files replaces them, and the first folder goes
    every_version = json.dumps({"max_batch_size": 8, "version_policy": {"all": {}}})
    client.load_model("add", config=every_version, files={"file:3/model.onnx": add_model_bytes(tmp_path, 9.0),
                                                          "file:4/model.onnx": add_model_bytes(tmp_path, 4.0)})
    assert answer(client, "add", "3") == 9.0 and answer(client, "add") == 4.0
    [second] = sent_folders(scratch)
    assert second != first

    client.load_model("add")  # a plain load: the repository's folder again
    assert answer(client, "add") == 2.0 and client.is_model_ready("add", "2")
    assert not client.is_model_ready("add", "3") and not client.is_model_ready("add", "4")
    assert sent_folders(scratch) == []


@pytest.mark.parametrize("path, problem", [
    ("../x", "the path may not contain '..' or '.'"),
    ("1/../../x", "the path may not contain '..' or '.'"),
    ("/abs", "the path is absolute"),
    ("/etc/passwd", "the path is absolute"),
    ("", "the path is empty"),
    ("1//model.onnx", "the path has an empty part"),
    ("1/", "the path has an empty part"),
    ("1/.model.onnx", "cannot be a file or folder name: it starts with a dot"),
    ("1/a\\b", "cannot be a file or folder name: it contains a path separator"),
    ("1/a\nb", "cannot be a file or folder name: it contains a control character"),
    ("1/a/model.onnx", "the path is too deep"),
    ("01/model.onnx", "'01' is not a version folder"),
    ("config.pbtxt", "config.pbtxt is not sent as a file"),
])
def test_a_bad_path_is_refused_naming_it(client, scratch: Path, tmp_path: Path, path: str, problem: str):
    files = {"file:1/model.onnx": add_model_bytes(tmp_path, 3.0), f"file:{path}": b"x"}
    with pytest.raises(Exception) as err:
        client.load_model("add", config=CONFIG, files=files)
    assert err.value.status() == ("StatusCode.INVALID_ARGUMENT" if is_grpc(client) else "400"), err.value
    assert f"model 'add': load parameter {'file:' + path!r}: " in err.value.message()
    assert problem in err.value.message()
    assert answer(client, "add") == 2.0  # serves on as it did
    assert sent_folders(scratch) == []


def test_a_file_named_as_a_version_folder_is_refused(client, tmp_path: Path):
    with pytest.raises(Exception) as err:
        client.load_model("add", config=CONFIG, files={"file:1": b"x", "file:1/model.onnx": b"y"})
    assert err.value.status() == ("StatusCode.INVALID_ARGUMENT" if is_grpc(client) else "400"), err.value
    assert "load parameter 'file:1' names a file where other parameters need a folder" in err.value.message()


def test_files_without_config_are_refused(client, tmp_path: Path):
    with pytest.raises(Exception) as err:
        client.load_model("sent", files={"file:1/model.onnx": add_model_bytes(tmp_path, 1.0)})
    assert err.value.status() == ("StatusCode.INVALID_ARGUMENT" if is_grpc(client) else "400"), err.value
    assert ("model 'sent': a load with model files ('file:1/model.onnx') needs the 'config' parameter too"
            in err.value.message())
    assert not client.is_model_ready("sent")


def test_files_that_do_not_load_are_refused_and_the_model_serves_on(client, scratch: Path):
    with pytest.raises(Exception) as err:
        client.load_model("add", config=CONFIG, files={"file:2/model.onnx": b"not an onnx model"})
    assert err.value.status() == ("StatusCode.INVALID_ARGUMENT" if is_grpc(client) else "400"), err.value
    assert "model 'add' did not load with its config override: version 2" in err.value.message()
    assert answer(client, "add") == 2.0
    assert sent_folders(scratch) == []  # nothing serves from the folder: it is gone already

    with pytest.raises(Exception) as err:  # a model absent from the repository
        client.load_model("sent", config=CONFIG, files={"file:1/model.onnx": b"not an onnx model"})
    assert err.value.status() == ("StatusCode.INVALID_ARGUMENT" if is_grpc(client) else "400"), err.value
    assert not client.is_model_ready("sent")
    assert sent_folders(scratch) == []


def test_a_value_of_the_wrong_kind_is_refused(server: ServerProcess, scratch: Path):
    url = f"{server.http_url}/v2/repository/models/add/load"
    for value, message in (("not base64!", "the load request's parameter 'file:1/model.onnx' is not valid base64"),
                           (12, "the load request's parameter 'file:1/model.onnx' must be the file's content as "
                                "a base64 string, got 12")):
        reply = requests.post(url, json={"parameters": {"config": CONFIG, "file:1/model.onnx": value}}, timeout=30)
        assert reply.status_code == 400, reply.text
        assert message in reply.json()["error"]

    request = service_pb2.RepositoryModelLoadRequest(model_name="add")
    request.parameters["config"].string_param = CONFIG
    request.parameters["file:1/model.onnx"].string_param = "text, not bytes"
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(request, timeout=30)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ("model 'add': load parameter 'file:1/model.onnx' must hold the file's content as bytes"
            in (err.value.details() or ""))
    assert sent_folders(scratch) == []


def test_shutdown_removes_the_folder(tmp_path: Path):
    repo = write_model_repository(tmp_path / "repo", {"add": ModelSpec(write_add_constant_model)})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = start_server(repo, scratch)
    try:
        client = tc.InferenceServerClient(server.grpc_address)
        client.load_model("sent", config=CONFIG, files={"file:1/model.onnx": add_model_bytes(tmp_path, 6.0)})
        assert answer(client, "sent") == 6.0
        client.close()
        assert len(sent_folders(scratch)) == 1
    finally:
        assert server.stop() == 0
    assert sent_folders(scratch) == []


def test_the_next_server_removes_the_folder_of_a_killed_one(tmp_path: Path):
    repo = write_model_repository(tmp_path / "repo", {"add": ModelSpec(write_add_constant_model)})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    killed = start_server(repo, scratch)
    try:
        with tc.InferenceServerClient(killed.grpc_address) as client:
            client.load_model("sent", config=CONFIG, files={"file:1/model.onnx": add_model_bytes(tmp_path, 6.0)})
    finally:
        killed.stop(signal.SIGKILL)  # no shutdown: the folder stays
    [left] = sent_folders(scratch)
    hour_ago = time.time() - 3600
    os.utime(left / OWNER_FILE, (hour_ago, hour_ago))  # restarted later (a folder of the last minute is kept)

    restarted = start_server(repo, scratch)
    try:
        assert sent_folders(scratch) == []
        assert "removed 1 temporary folder(s) of model files sent with loads" in restarted.log
    finally:
        assert restarted.stop() == 0


def test_files_are_refused_in_fleet_mode(tmp_path: Path):
    repo = write_model_repository(tmp_path / "repo", {"add": ModelSpec(write_add_constant_model)})
    with RedisServer() as redis, ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "add",
                                               *fleet_args(redis.url, "a")) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        with pytest.raises(tc.InferenceServerException) as err:
            client.load_model("add", config=CONFIG, files={"file:1/model.onnx": add_model_bytes(tmp_path, 6.0)})
        assert err.value.status() == "StatusCode.UNIMPLEMENTED", err.value
        assert "a config override with model files is not supported in fleet mode" in err.value.message()
        assert answer(client, "add") == 1.0
        client.close()

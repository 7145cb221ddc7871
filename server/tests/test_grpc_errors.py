"""Every error case over gRPC: exact status code, a message a person understands, server keeps serving."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server.grpc_errors import STATUS_TEXT_BYTES, status_text


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def request(model="dense", inputs=None, version="", outputs=()):
    msg = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, raw in inputs if inputs is not None else [("INPUT0", "FP32", [1, 16], bytes(64))]:
        msg.inputs.add(name=name, datatype=datatype, shape=shape)
        msg.raw_input_contents.append(raw)
    for name in outputs:
        msg.outputs.add(name=name)
    return msg


def fails(stub, msg, code, *fragments):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(msg)
    assert err.value.code() == code, err.value.details()
    for fragment in fragments:
        assert fragment in err.value.details(), err.value.details()
    return err.value.details()


F32 = np.float32().itemsize


@pytest.mark.parametrize("msg, code, fragments", [
    (request(model="nope"), grpc.StatusCode.NOT_FOUND, ["unknown model 'nope'"]),
    (request(version="7"), grpc.StatusCode.NOT_FOUND, ["no version 7"]),
    (request(version="abc"), grpc.StatusCode.NOT_FOUND, ["no version 'abc'", "whole numbers"]),
    (request(version=" 1"), grpc.StatusCode.NOT_FOUND, ["no version ' 1'", "whole numbers"]),  # int() takes it
    (request(version="1_0"), grpc.StatusCode.NOT_FOUND, ["no version '1_0'"]),  # int() reads 10
    (request(version="\uff11"), grpc.StatusCode.NOT_FOUND, ["whole numbers"]),  # a full-width 1: int() reads 1
    (request(model="../dense"), grpc.StatusCode.NOT_FOUND, []),
    (request(model="corrupt"), grpc.StatusCode.UNAVAILABLE, ["corrupt", "not ready"]),
    (request(model="badconfig"), grpc.StatusCode.UNAVAILABLE, ["max_batch_sise"]),
    (request(inputs=[("WRONG", "FP32", [1, 16], bytes(64))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["no input 'WRONG'", "INPUT0"]),
    (request(inputs=[]), grpc.StatusCode.INVALID_ARGUMENT, ["missing: INPUT0"]),
    (request(inputs=[("INPUT0", "FP32", [1, 16], bytes(64)), ("INPUT0", "FP32", [1, 16], bytes(64))]),
     grpc.StatusCode.INVALID_ARGUMENT, ["more than once"]),
    (request(inputs=[("INPUT0", "INT32", [1, 16], bytes(64))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["INPUT0", "INT32", "FP32"]),
    (request(inputs=[("INPUT0", "FP33", [1, 16], bytes(64))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["unknown datatype 'FP33'"]),
    (request(inputs=[("INPUT0", "FP32", [1, 15], bytes(60))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["INPUT0", "[1, 15]", "[-1, 16]"]),
    (request(inputs=[("INPUT0", "FP32", [16], bytes(64))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["INPUT0", "[16]", "[-1, 16]"]),
    (request(inputs=[("INPUT0", "FP32", [1, 16], bytes(63))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["INPUT0", "63 bytes", "64 bytes"]),
    (request(inputs=[("INPUT0", "FP32", [1000, 16], bytes(1000 * 16 * F32))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["batch size 1000", "max_batch_size"]),
    (request(inputs=[("INPUT0", "FP32", [0, 16], b"")]), grpc.StatusCode.INVALID_ARGUMENT, ["batch size 0"]),
    (request(inputs=[("INPUT0", "FP32", [1, -16], bytes(64))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["INPUT0", "[1, -16]", "negative dimension"]),
    (request(outputs=["NOPE"]), grpc.StatusCode.INVALID_ARGUMENT, ["no output 'NOPE'", "OUTPUT0"]),
    (request(outputs=["OUTPUT0", "OUTPUT0"]), grpc.StatusCode.INVALID_ARGUMENT, ["output 'OUTPUT0'", "more than once"]),
    (request(model="nobatch", inputs=[("INPUT0", "FP32", [2, 16], bytes(128))]), grpc.StatusCode.INVALID_ARGUMENT,
     ["[2, 16]", "[1, 16]"]),
])
def test_error_codes_and_messages(stub, msg, code, fragments):
    fails(stub, msg, code, *fragments)


@pytest.mark.parametrize("version", ["abc", "1_0", "7"])
def test_statistics_of_a_version_that_is_not_one_is_not_found(stub, version):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="dense", version=version))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    assert "dense" in err.value.details() and version in err.value.details()
    reply = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="dense", version="1"))
    assert [s.version for s in reply.model_stats] == ["1"]


def test_raw_and_input_counts_must_agree(stub):
    msg = request()
    msg.raw_input_contents.append(b"")
    fails(stub, msg, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents")


def test_typed_contents_beside_raw_contents_are_refused_not_ignored(stub):
    """As in Triton: a request with raw_input_contents must not also carry typed contents (they would be dropped)."""
    msg = request()
    msg.inputs[0].contents.fp32_contents.extend([1.0] * 16)
    fails(stub, msg, grpc.StatusCode.INVALID_ARGUMENT, "input 'INPUT0'", "contents", "raw_input_contents")
    assert stub.ModelInfer(request()).outputs[0].name == "OUTPUT0"


def test_backend_failure_is_internal_and_server_keeps_serving(stub):
    bad = request(model="fragile", inputs=[("INPUT0", "FP32", [1, 4], bytes(16))])
    details = fails(stub, bad, grpc.StatusCode.INTERNAL, "Reshape")
    assert "fragile" in details or "model.onnx" in details
    good = request(model="fragile", inputs=[("INPUT0", "FP32", [1, 6], bytes(24))])
    assert list(stub.ModelInfer(good).outputs[0].shape) == [2, 3]
    assert stub.ModelInfer(request()).outputs[0].name == "OUTPUT0"


def test_repository_index_reports_failures_with_reasons(stub):
    index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    by_name = {(m.name, m.version): m for m in index.models}
    assert by_name[("dense", "1")].state == "READY"
    corrupt = [m for m in index.models if m.name == "corrupt"]
    assert corrupt and corrupt[0].state == "UNAVAILABLE" and "model.onnx" in corrupt[0].reason
    bad = [m for m in index.models if m.name == "badconfig"]
    assert bad and bad[0].state == "UNAVAILABLE"
    assert "config.pbtxt" in bad[0].reason and "max_batch_sise" in bad[0].reason
    threads = by_name[("threads", "1")]
    assert threads.state == "UNAVAILABLE" and threads.reason.startswith(
        "model 'threads': parameter intra_op_thread_count is 2048, but onnxruntime starts that many threads"), threads
    assert "use at most 1024" in threads.reason
    negative = by_name[("negative_threads", "1")]
    assert negative.state == "UNAVAILABLE"
    assert "intra_op_thread_count must be a whole number >= 0, got '-2'" in negative.reason
    dirconfig = [m for m in index.models if m.name == "dirconfig"]
    assert dirconfig and dirconfig[0].state == "UNAVAILABLE", dirconfig
    assert dirconfig[0].reason.endswith("dirconfig/config.pbtxt: is not a file (a folder, or a link to nothing); "
                                        "config.pbtxt must be a text file, or absent for a config completed from the "
                                        "model"), dirconfig
    ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert all(m.state == "READY" for m in ready.models)


def test_repository_control_refused_outside_explicit_mode(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="dense"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "explicit" in err.value.details()


def test_unknown_model_metadata_and_config(stub):
    for call, req in [(stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope")),
                      (stub.ModelConfig, service_pb2.ModelConfigRequest(name="nope")),
                      (stub.ModelStatistics, service_pb2.ModelStatisticsRequest(name="nope"))]:
        with pytest.raises(grpc.RpcError) as err:
            call(req)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["x" * 100_000, "\u00e9" * 5_000], ids=["ascii", "two-byte"])
def test_an_unknown_model_with_a_huge_name_is_still_not_found(stub, name):
    """The status message quotes the name; grpc's clients refuse a trailer of more than 16 KiB
    (percent-encoded), which would turn NOT_FOUND into RESOURCE_EXHAUSTED. The message is cut to fit."""
    details = fails(stub, request(model=name), grpc.StatusCode.NOT_FOUND, "unknown model '", "...[cut: ")
    cut = re.search(r"\.\.\.\[cut: (\d+) characters\]$", details)
    assert cut and int(cut.group(1)) > len(name), details[-80:]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=name))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_status_text_fits_its_encoded_limit():
    assert status_text("short") == "short"
    for text in ("%" * 5000, "\u00e9" * 5000, "\U0001f600" * 2000, "a" * 4096):
        cut = status_text(text)
        encoded = sum(1 if 0x20 <= ord(c) <= 0x7E and c != "%" else 3 * len(c.encode()) for c in cut)
        assert encoded <= STATUS_TEXT_BYTES, (text[:3], encoded)
    assert status_text("a" * 4096) == "a" * 4096  # exactly the limit: unchanged


def test_unimplemented_protocol_rpcs_answer_unimplemented(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/CudaSharedMemoryStatus")
        with pytest.raises(grpc.RpcError) as err:
            call(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_bytes_that_are_no_request_get_invalid_argument_and_the_server_keeps_serving(server, stub):
    """The decoder reads requests from their bytes (server/grpc_codec.py): what cannot be parsed is the caller's."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            infer(b"\x0a\x05ab")  # a model name that runs past the end
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelInferRequest" in err.value.details()
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
        good = request(model="dense")
        good.id = "good"
        answers = list(stream(iter([good.SerializeToString(), b"\x0a\x05ab", good.SerializeToString()]), timeout=30))
    assert len(answers) == 3
    failed = [a for a in answers if a.error_message]
    assert len(failed) == 1 and "not a valid ModelInferRequest" in failed[0].error_message
    assert [a.infer_response.id for a in answers if not a.error_message] == ["good", "good"]
    assert stub.ModelInfer(request()).outputs[0].name == "OUTPUT0"


@pytest.mark.parametrize("method", ["ModelMetadata", "ModelConfig", "ModelStatistics", "ModelReady",
                                    "RepositoryModelLoad", "RepositoryModelUnload", "ModelInfer"])
def test_a_model_name_that_is_not_utf8_is_invalid_argument_in_every_rpc(server, stub, method):
    """protobuf refuses a string field that is not UTF-8: that is the caller's error, as any bytes that are no
    request, never grpc's UNKNOWN ("Unexpected DecodeError") with a traceback in the server's log."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x0a\x02\xc0\xae")  # field 1 (name / model_name): an overlong '.', not UTF-8
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert f"not a valid {method}Request message" in err.value.details()
    assert "a string field that is not UTF-8" in err.value.details()
    assert "Unexpected" not in server.log
    assert stub.ModelInfer(request()).outputs[0].name == "OUTPUT0"


def test_a_request_shaped_like_earlier_ones_is_checked_as_fully_as_the_first(stub):
    """Requests of one structure are decoded from a template after the first; a bad one still gets its error."""
    for _ in range(3):
        assert stub.ModelInfer(request()).outputs[0].name == "OUTPUT0"
    fails(stub, request(inputs=[("INPUT0", "FP32", [1, 16], bytes(63))]), grpc.StatusCode.INVALID_ARGUMENT,
          "INPUT0", "raw contents hold 63 bytes", "needs 64 bytes")
    fails(stub, request(outputs=["NOPE"]), grpc.StatusCode.INVALID_ARGUMENT, "no output 'NOPE'")
    fails(stub, request(outputs=["NOPE"]), grpc.StatusCode.INVALID_ARGUMENT, "no output 'NOPE'")

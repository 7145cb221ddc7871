"""Triton's perf_analyzer against fleetserve's ensembles and sequence models, as a Triton user runs it.

perf_analyzer reads an ensemble's config, drives it, and reports each composing model from the server's
statistics; it finds the version that served by the statistics' queue count growing (without ``-x``), so
an ensemble's own statistics must count its requests there. For a sequence model it reads
``sequence_batching`` from the config and sends sequences (``sequence_id``, start and end flags) itself.
"""

from __future__ import annotations

import shutil
from functools import partial

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from loadtest import perf_analyzer
from model_store.examples import REPOSITORY
from model_store.stateful_testing import ACC_PIPE, ACCUMULATOR_SEQUENCE_BATCHING, PLUS_ONE, write_accumulator_model
from model_store.testing import ModelSpec, write_add_constant_model, write_model_repository
from server.testing import ServerProcess

ANY_WINDOWS = 1000  # what happens, not how fast: windows that disagree must not fail a run on a busy machine



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("repo")
    for name in ("add_one", "dense", "pipeline"):  # the bundled ensemble and its models
        shutil.copytree(REPOSITORY / name, root / name)
    write_model_repository(root, {
        "acc": ModelSpec(write_accumulator_model, config="max_batch_size: 8\n" + ACCUMULATOR_SEQUENCE_BATCHING.format(
            idle_us=5_000_000, initial="", strategy="oldest { }")),
        "plus_one": ModelSpec(partial(write_add_constant_model, features=4, constant=1.0), config=PLUS_ONE),
        "acc_pipe": ModelSpec(lambda folder: None, config=ACC_PIPE),  # an ensemble whose second step runs acc
    })
    with ServerProcess(root) as proc:
        yield proc


def counts(address: str, model: str) -> tuple[int, int]:
    """(successful requests, inferences) of ``model`` in the server's statistics."""
    with grpcclient.InferenceServerClient(address) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("inference_count", 0))


def test_perf_analyzer_drives_an_ensemble_and_reads_its_composing_models(pa, server: ServerProcess) -> None:
    before = {m: counts(server.grpc_address, m) for m in ("pipeline", "add_one", "dense")}

    csv = perf_analyzer.run_csv(pa, server.grpc_address, "pipeline", concurrency=4, window_ms=300,
                                stability_percent=ANY_WINDOWS, timeout_s=90, extra=["--verbose-csv"])

    after = {m: counts(server.grpc_address, m) for m in ("pipeline", "add_one", "dense")}
    served = after["pipeline"][0] - before["pipeline"][0]
    assert served > 0
    # each request of the ensemble ran both steps, counted by its models
    assert after["add_one"][0] - before["add_one"][0] == after["dense"][0] - before["dense"][0] == served
    assert "Inferences/Second" in csv.splitlines()[0] and float(perf_analyzer.parse_csv(csv).throughput) > 0


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_perf_analyzer_drives_a_sequence_model_with_sequences_of_its_own(pa, server: ServerProcess,
                                                                        streaming: bool) -> None:
    before = counts(server.grpc_address, "acc")

    result = perf_analyzer.run(pa, server.grpc_address, "acc", concurrency=4, streaming=streaming, window_ms=300,
                               stability_percent=ANY_WINDOWS, timeout_s=90, extra=["--sequence-length", "5"])

    assert result.throughput > 0
    assert counts(server.grpc_address, "acc")[0] > before[0]  # served, none refused as outside a sequence
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        failed = client.get_inference_statistics("acc", as_json=True)["model_stats"][0]["inference_stats"]["fail"]
    assert int(failed.get("count", 0)) == 0


def test_perf_analyzer_drives_sequences_through_an_ensemble_with_a_sequence_step(pa, server: ServerProcess) -> None:
    before = {m: counts(server.grpc_address, m) for m in ("acc_pipe", "acc")}

    result = perf_analyzer.run(pa, server.grpc_address, "acc_pipe", concurrency=4, window_ms=300,
                               stability_percent=ANY_WINDOWS, timeout_s=90, extra=["--sequence-length", "5"])

    assert result.throughput > 0
    served = counts(server.grpc_address, "acc_pipe")[0] - before["acc_pipe"][0]
    assert served > 0 and counts(server.grpc_address, "acc")[0] - before["acc"][0] == served
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        failed = client.get_inference_statistics("acc_pipe", as_json=True)["model_stats"][0]["inference_stats"]["fail"]
    assert int(failed.get("count", 0)) == 0  # perf_analyzer sent sequences: none refused as outside one


def test_the_ensemble_counts_a_queue_entry_per_request(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
        client.infer("pipeline", [tensor])
        stats = client.get_inference_statistics("pipeline", as_json=True)["model_stats"][0]["inference_stats"]
    assert int(stats["queue"].get("count", 0)) == int(stats["success"].get("count", 0)) > 0


"""model_warmup on a real server: the samples run at load with their data, and one that fails keeps the version
from serving (UNAVAILABLE with the reason), while the other models serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from model_store.testing import ModelSpec, write_add_constant_model, write_lookup_model, write_model_repository
from server.testing import ServerProcess


CONFIG = """max_batch_size: 8
model_warmup [ { name: "from-file" batch_size: 8 count: 2
  inputs { key: "INDEX" value: { data_type: TYPE_INT64 dims: [ ] input_data_file: "index" } } } ]
"""


def test_samples_run_with_their_data_and_a_failing_one_keeps_the_version_from_serving(tmp_path: Path):
    repo = write_model_repository(tmp_path, {
        "good": ModelSpec(write_lookup_model, config=CONFIG),
        "bad": ModelSpec(write_lookup_model, config=CONFIG),
        "missing": ModelSpec(write_lookup_model, config=CONFIG),
        "add": ModelSpec(write_add_constant_model),
    })
    for name, index in (("good", 2), ("bad", 7)):
        (repo / name / "warmup").mkdir()
        (repo / name / "warmup" / "index").write_bytes(np.array(index, "<i8").tobytes())
    with ServerProcess(repo) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        states = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert states["good"] == ("READY", "")
        assert states["bad"][0] == "UNAVAILABLE"
        assert "model_warmup[0] 'from-file' failed:" in states["bad"][1], states["bad"]
        assert "indices element out of data bounds" in states["bad"][1], states["bad"]
        assert states["missing"][0] == "UNAVAILABLE"
        assert "cannot read its warm-up data" in states["missing"][1] and "missing/warmup/index" in states["missing"][1]
        inp = tc.InferInput("INDEX", [1], "INT64")
        inp.set_data_from_numpy(np.array([1], np.int64))
        assert client.infer("good", [inp]).as_numpy("OUT").tolist() == [[2.0]]
        sample = client.get_model_config("good").config.model_warmup[0]
        assert (sample.name, sample.batch_size, sample.count) == ("from-file", 8, 2)
        assert sample.inputs["INDEX"].input_data_file == "index"
        client.close()

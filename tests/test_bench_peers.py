"""The batch benchmark's peers run the same model and give the same answers as edgehema.

A ratio to a peer means something only if the peer does the same job: these tests hold the plain
pipelines (onnxruntime and PyTorch eager on the whole array) to each other and to edgehema's own
event classes, and edgehema's pipeline with a PyTorch graph to edgehema's float model's cells.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas", reason="the plain pipeline peer reads with pandas (test extra)")
pytest.importorskip("torch", reason="the PyTorch peers need torch (export extra)")

from edgehema.model.classifier import Classifier  # noqa: E402
from edgehema.formats import read_sample, write_sample  # noqa: E402
from edgehema.counts.result import classify_sample  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_classify.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_classify_under_test", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH.parent))


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("peers") / "human.csv"
    write_sample(SampleSimulator("human", seed=4242).generate(30_000).sample, path)
    return path


def test_plain_pipelines_agree_on_every_event_class(bench, sample_file):
    with_ort = bench._plain_one(str(sample_file))
    with_torch = bench._plain_one(str(sample_file), "torch")
    assert sum(with_ort.values()) == 30_000
    assert set(with_ort) <= {"rbc", "retic", "plt", "coincidence", "noise"}
    # The same float weights in two engines: float32 rounding may move a handful of border events.
    for name in set(with_ort) | set(with_torch):
        assert abs(with_ort.get(name, 0) - with_torch.get(name, 0)) <= 3, (name, with_ort, with_torch)


def test_plain_pipeline_classes_match_edgehema_events_roughly(bench, sample_file):
    """The plain pipeline has no per-sample adaptation, so it is not identical, but it must be the
    same model: each class within 1 % of all events of edgehema's float model's event counts."""
    plain = bench._plain_one(str(sample_file))
    ours = classify_sample(read_sample(sample_file), Classifier("reference", backend="onnx", threads=1)).to_dict()
    events = ours["events"]
    for name in ("rbc", "retic", "plt", "coincidence", "noise"):
        assert abs(plain.get(name, 0) - events[name]) <= 0.01 * 30_000, (name, plain, events)


def test_pytorch_graph_in_edgehemas_pipeline_gives_the_float_models_cells(bench, sample_file):
    ours = classify_sample(read_sample(sample_file), Classifier("reference", backend="onnx", threads=1)).to_dict()
    assert bench._peer_one(str(sample_file))["cells"] == ours["cells"]

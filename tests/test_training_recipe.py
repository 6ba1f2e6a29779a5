"""The shipped model's recipe at a tiny scale: it goes through edgehema train, losses fall, the
bundle exports, loads and classifies.

CI does not retrain the shipped model; this proves the recipe still runs end to end. Needs torch
(the ``export`` extra, which the README's test command installs).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training recipe needs torch (pip install -e '.[export]')")

from edgehema.model.bundle import Bundle  # noqa: E402
from edgehema.model.classifier import Classifier  # noqa: E402
from edgehema.counts.result import classify_sample  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402
from export.training.shipped_models import Recipe, run  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    history: dict = {}
    lines: list[str] = []
    written = run(Recipe.tiny(), out, log=lines.append, history=history)
    return out, written, history, lines


def test_losses_fall(tiny):
    _, _, history, _ = tiny
    for stage in ("stage1", "stage2"):
        h = np.array(history[stage])
        assert len(h) > 50
        assert np.mean(h[-20:]) < np.mean(h[:20]), stage


def test_exported_bundles_load_and_classify(tiny):
    _, written, _, _ = tiny
    ref = Bundle.load(written["reference"])
    assert ref.manifest["training"]["samples"] == 15
    assert ref.manifest["supervision"].startswith("sample-level counts only")
    # The one training code path: the shipped recipe is edgehema train on simulated files and their
    # reference CSV (sample-level counts, the events per class the simulator knows included).
    card = ref.manifest["model_card"]
    assert "edgehema train" in ref.manifest["training"]["recipe"]
    assert card["data"]["files"] == 15 and card["data"]["with_reference"] == 15
    assert set(card["reference"]["columns"]) == {"sample_id", "rbc", "plt", "retic_percent", "dilution", "volume_ul",
                                                 "events_noise", "events_rbc", "events_retic", "events_coincidence", "events_plt"}
    assert card["supervision"]["coincidences"] == ["counted"]
    assert card["supervision"]["noise"] == "counted per class in the reference"
    assert ref.manifest["training"]["species"] == ["cat", "cattle", "dog", "horse", "human"]
    s = SampleSimulator("dog", seed=3).generate(5000)
    result = classify_sample(s.sample, Classifier(ref)).to_dict()
    assert result["events"]["total"] == 5000
    assert result["model"]["sha256"] == ref.sha256
    sup = Classifier(Bundle.load(written["supervised-mlp"]))
    assert sup.infer(s.sample.events).probabilities.shape == (5000, 5)


def test_recipe_is_deterministic(tiny, tmp_path):
    out, written, _, _ = tiny
    again = run(Recipe.tiny(), tmp_path, log=lambda _: None)
    a = Bundle.load(written["reference"]).manifest
    b = Bundle.load(again["reference"]).manifest
    assert a["stage1"]["centroids"] == b["stage1"]["centroids"]
    assert a["stage2"]["means"] == b["stage2"]["means"]


def test_shipped_model_passes_the_final_model_check_on_its_own_training_samples(monkeypatch):
    """Model 2.0.0 predates edgehema train's final-model check: its first training samples, simulated
    again from its manifest, are counted within the limit its cross-validated score sets (the full
    200: `python -m export.training.shipped_models --check-shipped`, docs/training.md); and the check fails
    a bundle held to a limit it cannot meet."""
    from pathlib import Path

    import export.training.run as R
    from export.training.shipped_models import check_shipped

    models = Path(__file__).resolve().parents[1] / "edgehema" / "model" / "shipped"
    lines: list[str] = []
    assert check_shipped(models, lines.append, samples_per_species=2)
    assert len(lines) == 3 and all("passed" in line for line in lines)
    monkeypatch.setattr(R, "FINAL_SCORE_MARGIN", -2.0)  # limit 1.5 x 1.033 - 2 < 0: nothing passes
    lines.clear()
    assert not check_shipped(models, lines.append, samples_per_species=2)
    assert all("FAILED" in line for line in lines)
    with pytest.raises(SystemExit, match="not a bundle made by this recipe"):
        check_shipped(Path(__file__).parent)  # no reference/manifest.json here: one line, no traceback

"""The bundle contract: verification, tamper refusal, profile check, one-line errors."""

import json
import shutil

import numpy as np
import pytest

from edgehema import BundleError, ProfileMismatchError, get_profile
from edgehema.model.bundle import MANIFEST, Bundle, bundled_models, manifest_digest


@pytest.fixture
def bundle_copy(tmp_path):
    src = Bundle.load("reference").path
    dst = tmp_path / "ref"
    shutil.copytree(src, dst)
    return dst


def test_shipped_bundles_verify():
    assert {"reference", "supervised-mlp"} <= set(bundled_models())
    b = Bundle.load("reference")
    assert b.name == "edgehema-reference" and b.kind == "two-stage-idec-vade"
    assert b.feature_names == get_profile("optical-11").feature_names
    assert b.classes == ("noise", "rbc", "retic", "coincidence", "plt")
    assert b.manifest["supervision"].startswith("sample-level counts only")
    assert set(b.manifest["training"]["species"]) == {"human", "dog", "cat", "horse", "cattle"}
    assert len(b.sha256) == 64 and b.manifest["files"]["model.onnx"]
    assert b.model_file.stat().st_size < 200_000  # small enough to ship


def test_one_byte_changed_in_the_model_is_refused(bundle_copy):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 mismatch .* corrupt or was modified"):
        Bundle.load(bundle_copy)


def test_manifest_edit_is_refused(bundle_copy):
    mpath = bundle_copy / MANIFEST
    m = json.loads(mpath.read_text())
    m["stage1"]["centroids"][0][0] += 0.5
    mpath.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest content does not match its integrity digest"):
        Bundle.load(bundle_copy)


def test_resealed_manifest_loads(bundle_copy):
    """The digest is reproducible: a data scientist's own tooling can compute it."""
    m = json.loads((bundle_copy / MANIFEST).read_text())
    assert m["integrity"]["manifest_sha256"] == manifest_digest(m)


def test_missing_pieces(bundle_copy, tmp_path):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx: file listed in the manifest is missing"):
        Bundle.load(bundle_copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="not a model bundle: manifest.json is missing"):
        Bundle.load(empty)
    with pytest.raises(BundleError, match="no such model bundle"):
        Bundle.load(tmp_path / "nowhere")
    (empty / MANIFEST).write_text("{oops")
    with pytest.raises(BundleError, match="manifest is not valid JSON"):
        Bundle.load(empty)


def test_features_must_match_profile():
    b = Bundle.load()
    b.check_profile(get_profile("optical-11"))
    with pytest.raises(ProfileMismatchError, match="expects profile optical-11 features .* the data has profile sysmex-xn-ret"):
        b.check_profile(get_profile("sysmex-xn-ret"), "x.116.csv")


def test_preprocessing_follows_manifest():
    b = Bundle.load()
    ev = np.full((2, 11), 100.0, dtype=np.float32)
    x = b.preprocess(ev)
    pre = b.manifest["preprocessing"]
    expected = (np.log1p(100.0) - np.array(pre["mean"])) / np.array(pre["std"])
    np.testing.assert_allclose(x[0], expected, rtol=1e-5)


@pytest.mark.parametrize("rows", [0, 1, 255, 256, 257, 4096, 4099])
def test_preprocessing_in_blocks_is_the_plain_formula_bit_for_bit(rows):
    """bundle.preprocess standardises in blocks of PRE_ROWS rows (speed); the result must be the
    plain broadcast formula exactly, whatever the row count, and the events untouched."""
    b = Bundle.load()
    ev = np.random.default_rng(rows).uniform(-5, 60000, size=(rows, 11)).astype(np.float32)
    before = ev.copy()
    pre = b.manifest["preprocessing"]
    plain = (np.log1p(np.maximum(ev, np.float32(0))) - np.asarray(pre["mean"], np.float32)) \
        / np.asarray(pre["std"], np.float32)
    got = b.preprocess(ev)
    assert got.dtype == np.float32 and np.array_equal(got, plain)
    assert np.array_equal(ev, before)

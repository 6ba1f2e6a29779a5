"""Signed models (issue 14): a device with trusted keys runs only bundles its maker signed, refuses the
rest in one line, and says which model it runs; without keys nothing changes (hash checks only)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from edgehema import Bundle
from edgehema.model.bundle import bundled_root, seal
from edgehema.exceptions import SignatureError
from edgehema.model.signing import (ENV_PASSPHRASE, ENV_TRUSTED_KEYS, SIGNATURES, TrustPolicy, generate_key_pair,
                              load_public_key, read_signatures, sign_bundle)
from edgehema.simulator import SampleSimulator


def run(*args, env=None, cwd=None):
    full = {k: v for k, v in os.environ.items() if k not in (ENV_TRUSTED_KEYS, ENV_PASSPHRASE)}
    full.update(env or {}, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "edgehema", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=180)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    maker = generate_key_pair(d / "maker")
    other = generate_key_pair(d / "other")
    return {"dir": d, "maker": maker, "other": other}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    """The default device model, copied and signed by the maker with the CLI."""
    out = tmp_path_factory.mktemp("signed") / "model"
    proc = run("sign", "reference-tflite-int8", "--key", keys["maker"][0], "--out", out, "--signer", "ACME release")
    assert proc.returncode == 0, proc.stderr
    assert "signed edgehema-reference" in proc.stdout and "with key" in proc.stdout
    return out


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("events") / "s.csv"
    from edgehema import write_sample
    write_sample(SampleSimulator("human", seed=3).generate(20_000).sample, path)
    return path


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("edgehema: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    private, public = keys["maker"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(SignatureError, match="already exists"):
        generate_key_pair(keys["dir"] / "maker")
    proc = run("keygen", keys["dir"] / "maker")
    assert "already exists" in one_error_line(proc)


def test_a_signed_bundle_runs_and_every_result_names_the_key(signed, keys, events_file):
    trust = TrustPolicy.from_paths([keys["maker"][1]], "test")
    b = Bundle.load(signed, trust=trust)
    assert b.signed_by is not None and b.signed_by.key_id == trust.keys[0].key_id
    [sig] = read_signatures(signed)
    assert sig["signer"] == "ACME release" and sig["manifest_sha256"] == b.sha256
    # On the device: the environment names the trusted key; classify runs and the result says who signed.
    env = {ENV_TRUSTED_KEYS: str(keys["maker"][1])}
    proc = run("classify", events_file, "--model", signed, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[0])
    assert result["model"]["signed_by"] == trust.keys[0].key_id
    proc = run("info", signed, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"this device: runs it (signed by trusted key {trust.keys[0].key_id}" in proc.stdout
    assert "signatures: key " in proc.stdout and "ACME release" in proc.stdout


def test_unsigned_and_other_key_bundles_are_refused_in_one_line(signed, keys, events_file):
    env = {ENV_TRUSTED_KEYS: str(keys["maker"][1])}
    # The shipped default model is not signed by this maker: refused, before any event is read.
    line = one_error_line(run("classify", events_file, "--json", env=env))
    assert "unsigned model bundle refused" in line and ENV_TRUSTED_KEYS in line
    # Trusting another key only: the maker's signature is not enough.
    other_env = {ENV_TRUSTED_KEYS: str(keys["other"][1])}
    line = one_error_line(run("classify", events_file, "--model", signed, "--json", env=other_env))
    assert "which this device does not trust" in line
    proc = run("info", signed, env=other_env)
    assert "this device: REFUSES it" in proc.stdout and "which this device does not trust" in one_error_line(proc)


def test_a_manifest_changed_and_resealed_after_signing_is_refused(signed, keys, tmp_path):
    """The hash check alone cannot see this: someone edits a threshold and re-seals the integrity digest."""
    copy = tmp_path / "tampered"
    shutil.copytree(signed, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["thresholds"]["stage2_shift_max"] = 99.0
    (copy / "manifest.json").write_text(json.dumps(seal(manifest, copy)))
    Bundle.load(copy, trust=TrustPolicy())  # its hashes are consistent: without keys it loads
    trust = TrustPolicy.from_paths([keys["maker"][1]], "test")
    with pytest.raises(SignatureError, match="signed another manifest"):
        Bundle.load(copy, trust=trust)
    # The signature bytes themselves changed: does not verify.
    copy2 = tmp_path / "forged"
    shutil.copytree(signed, copy2)
    sigs = json.loads((copy2 / SIGNATURES).read_text())
    raw = bytearray(base64.b64decode(sigs["signatures"][0]["signature"]))
    raw[5] ^= 0x01
    sigs["signatures"][0]["signature"] = base64.b64encode(bytes(raw)).decode()
    (copy2 / SIGNATURES).write_text(json.dumps(sigs))
    with pytest.raises(SignatureError, match="does not verify"):
        Bundle.load(copy2, trust=trust)
    # A changed model file is still caught by the hashes, before the signature.
    copy3 = tmp_path / "changed-file"
    shutil.copytree(signed, copy3)
    f = next(p for p in copy3.iterdir() if p.suffix == ".tflite")
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256 mismatch"):
        Bundle.load(copy3, trust=trust)


def test_key_rotation_a_bundle_signed_by_two_keys_runs_on_devices_trusting_either(signed, keys, tmp_path):
    copy = tmp_path / "two"
    shutil.copytree(signed, copy)
    digest = Bundle.load(copy, trust=TrustPolicy()).sha256
    sign_bundle(copy, digest, keys["other"][0])
    assert len(read_signatures(copy)) == 2
    for pub in (keys["maker"][1], keys["other"][1]):
        assert Bundle.load(copy, trust=TrustPolicy.from_paths([pub], "t")).signed_by is not None
    # Signing again with the same key replaces its signature rather than piling them up.
    sign_bundle(copy, digest, keys["other"][0])
    assert len(read_signatures(copy)) == 2
    # A folder of keys is read whole (*.pub and *.pem).
    folder = tmp_path / "trusted"
    folder.mkdir()
    shutil.copy(keys["other"][1], folder / "other.pub")
    assert Bundle.load(copy, trust=TrustPolicy.from_paths([folder], "t")).signed_by.key_id == \
        TrustPolicy.from_paths([keys["other"][1]], "t").keys[0].key_id


def test_openssh_keys_are_accepted(tmp_path, signed):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    (tmp_path / "id_ed25519").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                            serialization.NoEncryption()))
    (tmp_path / "id_ed25519.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                            serialization.PublicFormat.OpenSSH) + b" maker@build\n")
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    sign_bundle(copy, Bundle.load(copy, trust=TrustPolicy()).sha256, tmp_path / "id_ed25519")
    assert Bundle.load(copy, trust=TrustPolicy.from_paths([tmp_path / "id_ed25519.pub"], "t")).signed_by is not None


def test_a_misconfigured_device_fails_closed_with_one_line(tmp_path, keys, events_file):
    # A trusted-keys setting that names nothing readable stops the run: it never quietly stops checking.
    line = one_error_line(run("classify", events_file, env={ENV_TRUSTED_KEYS: str(tmp_path / "missing.pub")}))
    assert "no such trusted key file or folder" in line and ENV_TRUSTED_KEYS in line
    (tmp_path / "empty").mkdir()
    assert "holds no *.pub or *.pem key" in one_error_line(run("classify", events_file, env={ENV_TRUSTED_KEYS: str(tmp_path / "empty")}))
    # A private key given as a trusted key: named as such.
    with pytest.raises(SignatureError, match="this is a private key"):
        load_public_key(keys["maker"][0])
    with pytest.raises(SignatureError, match="not an Ed25519 public key|not a readable public key"):
        (tmp_path / "rsa.pub").write_text("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n")
        load_public_key(tmp_path / "rsa.pub")


def test_without_keys_behaviour_is_unchanged_and_info_says_so(events_file):
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    assert "signatures: none" in proc.stdout
    assert "this device: no trusted keys configured" in proc.stdout and "hash check only" in proc.stdout
    proc = run("classify", events_file, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["model"]["signed_by"] is None


def test_an_encrypted_signing_key_needs_its_passphrase(tmp_path, signed):
    proc = run("keygen", tmp_path / "enc", env={ENV_PASSPHRASE: "correct horse"})
    assert proc.returncode == 0 and "encrypted" in proc.stdout, proc.stderr
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "enc.key").read_bytes()
    copy = tmp_path / "b"
    shutil.copytree(signed, copy)
    assert ENV_PASSPHRASE in one_error_line(run("sign", copy, "--key", tmp_path / "enc.key"))
    proc = run("sign", copy, "--key", tmp_path / "enc.key", env={ENV_PASSPHRASE: "correct horse"})
    assert proc.returncode == 0, proc.stderr
    # A shipped bundle is signed into a copy only (it lives inside the installed package).
    assert "--out" in one_error_line(run("sign", "reference", "--key", tmp_path / "enc.key", env={ENV_PASSPHRASE: "correct horse"}))
    assert not (bundled_root() / "reference" / SIGNATURES).exists()


def test_the_stream_settings_name_trusted_keys_relative_to_the_file(tmp_path, keys, signed):
    from edgehema.cli.stream import _trusted_keys
    from edgehema.stream.runner import StreamConfig, StreamRunner
    from edgehema.stream.settings import load_stream_settings

    shutil.copy(keys["maker"][1], tmp_path / "maker.pub")
    cfg_file = tmp_path / "stream.toml"
    cfg_file.write_text('[stream]\nport = "loop://"\ntrusted_keys = ["maker.pub"]\n')
    extra = _trusted_keys(load_stream_settings(cfg_file), cfg_file)
    assert extra["trusted_keys"] == (str(tmp_path / "maker.pub"),)
    logs = []
    runner = StreamRunner(StreamConfig(port="loop://", journal=tmp_path / "j.sqlite", archive_dir=tmp_path / "a",
                                       model=str(signed), **extra), emit=lambda r: None, log=logs.append)
    runner.journal.close()
    assert any("signed by trusted key" in line and "maker.pub" in line for line in logs), logs
    with pytest.raises(SignatureError, match="unsigned model bundle refused"):
        StreamRunner(StreamConfig(port="loop://", journal=tmp_path / "j2.sqlite", archive_dir=tmp_path / "a2", **extra),
                     emit=lambda r: None)
    (tmp_path / "bad.toml").write_text('[stream]\ntrusted_keys = []\n')
    with pytest.raises(Exception, match="trusted_keys"):
        load_stream_settings(tmp_path / "bad.toml")


def test_smear_models_are_signed_and_checked_the_same_way(tmp_path, keys, monkeypatch):
    from edgehema.smear import learned

    folder = tmp_path / "smear"
    proc = run("sign", "bccd-int8", "--key", keys["maker"][0], "--out", folder)
    assert proc.returncode == 0 and "signed smear model" in proc.stdout, proc.stderr
    monkeypatch.setenv(ENV_TRUSTED_KEYS, str(keys["maker"][1]))
    learned.session.cache_clear()
    try:
        assert learned.session(str(folder)) is not None
        with pytest.raises(SignatureError, match="unsigned model bundle refused"):
            learned.session("bccd-int8")
        with pytest.raises(Exception, match="bare smear model file is refused"):
            learned.session(str(folder / "model.onnx"))
    finally:
        learned.session.cache_clear()

"""Signed models: ``keygen`` and ``sign`` (on the maker's workstation); the device checks signatures
when it is configured with trusted public keys (docs/signing.md)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.cli._app import app, out
from edgehema.model.bundle import Bundle, folder_kind
from edgehema.model.bundle import bundled_root
from edgehema.model.bundle import resolve_bundle_path
from edgehema.model.signing import ENV_PASSPHRASE, generate_key_pair, key_id, load_public_key
from edgehema.model.signing import TrustPolicy
from edgehema.model.signing import sign_bundle


@app.command()
def keygen(
    prefix: Path = typer.Argument(..., help="Writes PREFIX.key (private, mode 0600) and PREFIX.pub (the public key devices trust)."),
) -> None:
    """Make an Ed25519 key pair for signing model bundles. The private key is encrypted with
    $EDGEHEMA_KEY_PASSPHRASE when it is set; keep it off the devices."""

    private, public = generate_key_pair(prefix)
    enc = "encrypted with $" + ENV_PASSPHRASE if os.environ.get(ENV_PASSPHRASE) else "not encrypted: set $" + ENV_PASSPHRASE + " to encrypt"
    out.print(f"wrote {private} ({enc}) and {public}; key id {key_id(load_public_key(public))}")


@app.command()
def sign(
    bundle: str = typer.Argument(..., help="Model bundle directory (event or smear model), or a shipped name with --out."),
    key: Path = typer.Option(..., "--key", "-k", help="Ed25519 private key (edgehema keygen; PEM or OpenSSH)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Sign a copy written here (needed for a shipped bundle, which lives inside the installed package)."),
    signer: Optional[str] = typer.Option(None, "--signer", help="Who signs, recorded beside the signature (e.g. 'ACME release 2026-12')."),
) -> None:
    """Sign a model bundle: an Ed25519 signature over its manifest digest, which covers every file's
    sha256. The bundle's hashes are checked first: a damaged bundle is never signed."""

    source = _resolve(bundle)
    if out_dir is not None:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise EdgehemaError(f"{out_dir}: the copy's folder must not exist or be empty")
        # The copy is checked before and after copying: signing is for exactly what was verified.
        _digest(source)
        shutil.copytree(source, out_dir, dirs_exist_ok=True)
        target = out_dir
    else:
        if bundled_root() in source.resolve().parents:
            raise EdgehemaError(f"{bundle}: a shipped bundle is signed into a copy: add --out FOLDER")
        target = source
    digest, what = _digest(target)
    entry = sign_bundle(target, digest, key, signer)
    out.print(f"signed {what} at {target} with key {entry['key_id']}: manifest sha256 {digest}")


def _resolve(name: str) -> Path:
    from edgehema.smear.learned import MODELS

    p = Path(name)
    if not p.is_dir() and (MODELS / name).is_dir():
        return MODELS / name
    return resolve_bundle_path(name)


def _digest(directory: Path) -> tuple[str, str]:
    """The digest a signature covers, after checking the hashes: (digest, what the bundle is)."""
    from edgehema.smear.learned import smear_manifest_digest

    if folder_kind(directory) == "smear":
        return smear_manifest_digest(directory), "smear model"
    b = Bundle.load(directory, verify=True, trust=TrustPolicy())
    return b.sha256, f"{b.name} {b.version}"

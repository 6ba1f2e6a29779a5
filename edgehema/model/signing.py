"""Signed model bundles: a device runs only the models its maker released.

A bundle's identity is its manifest digest (``integrity.manifest_sha256``), which covers the sha256
of every file it holds. The maker signs that digest with an Ed25519 key (``edgehema sign BUNDLE
--key maker.key``); the signatures sit beside the manifest in ``signatures.json``, outside the
digest they sign, so a bundle can carry several (the old and the new key while keys rotate).

A device configured with trusted public keys (the stream setting ``trusted_keys`` or the
environment variable ``EDGEHEMA_TRUSTED_KEYS``) refuses, in one line, a bundle that is unsigned,
signed only by other keys, or whose signature does not verify (a manifest edited and re-sealed
after signing). Without configured keys nothing changes: every file's hash is checked, as always.

The signed message is ``b"edgehema-bundle-signature/1:" + digest`` (the 64 hex characters), so a
signature made for a bundle cannot be replayed as a signature of anything else. Keys are PEM
(PKCS#8 private, SubjectPublicKeyInfo public) or OpenSSH ``ssh-ed25519`` keys. The work is done by
the ``cryptography`` library, imported only when a signature is made or checked.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgehema.exceptions import SignatureError

SIGNATURES = "signatures.json"
FORMAT = "edgehema-signatures/1"
ALGORITHM = "ed25519"
ENV_TRUSTED_KEYS = "EDGEHEMA_TRUSTED_KEYS"
ENV_PASSPHRASE = "EDGEHEMA_KEY_PASSPHRASE"
_DOMAIN = b"edgehema-bundle-signature/1:"
#: Files in a trusted-keys folder that are read as public keys.
_KEY_SUFFIXES = (".pub", ".pem")


def signed_message(manifest_sha256: str) -> bytes:
    return _DOMAIN + manifest_sha256.encode("ascii")


def key_id(public_key) -> str:
    """A short, stable name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ------------------------------------------------------------------ keys
def _passphrase() -> bytes | None:
    value = os.environ.get(ENV_PASSPHRASE)
    return value.encode("utf-8") if value else None


def load_private_key(path: str | os.PathLike):
    """An Ed25519 private key from a PEM (PKCS#8, encrypted or not) or OpenSSH file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the signing key: {exc.strerror or exc}") from None
    loader = serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else serialization.load_pem_private_key
    try:
        key = loader(data, password=_passphrase())
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for an unencrypted key
        raise SignatureError(f"{path}: {exc} (the passphrase is read from ${ENV_PASSPHRASE})") from None
    except ValueError as exc:
        raise SignatureError(f"{path}: not a readable private key (PEM PKCS#8 or OpenSSH): {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__.replace('_', '')} key; bundles are signed with Ed25519 keys "
                             "(edgehema keygen makes one)")
    return key


def load_public_key(path: str | os.PathLike):
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) or OpenSSH (``ssh-ed25519 ...``) file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the trusted key: {exc.strerror or exc}") from None
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        hint = " (this is a private key: a device holds only public keys)" if b"PRIVATE KEY" in data else ""
        raise SignatureError(f"{path}: not a readable public key (PEM or OpenSSH){hint}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key ({type(key).__name__.replace('_', '')})")
    return key


def generate_key_pair(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (private, mode 0600, encrypted when $EDGEHEMA_KEY_PASSPHRASE is set) and
    ``PREFIX.pub``. Refuses to overwrite either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    prefix = Path(prefix)
    private_path, public_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SignatureError(f"{p}: already exists; a key is never overwritten (choose another name)")
    if not prefix.parent.is_dir():
        raise SignatureError(f"{prefix.parent}: no such folder for the keys")
    key = Ed25519PrivateKey.generate()
    pw = _passphrase()
    encryption = serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


# ------------------------------------------------------------ signatures
def read_signatures(directory: Path) -> list[dict]:
    """The signatures a bundle carries ([] when it has no signatures file)."""
    path = Path(directory) / SIGNATURES
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{path}: signatures file is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("signatures"), list):
        raise SignatureError(f"{path}: not an {FORMAT} file")
    for i, s in enumerate(data["signatures"], 1):
        if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("algorithm", "key_id", "manifest_sha256", "signature")):
            raise SignatureError(f"{path}: signature {i} lacks algorithm, key_id, manifest_sha256 or signature")
    return data["signatures"]


def sign_bundle(directory: str | os.PathLike, manifest_sha256: str, private_key_path: str | os.PathLike,
                signer: str | None = None) -> dict:
    """Add (or replace) the signature of ``private_key_path``'s key in the bundle's signatures file."""
    directory = Path(directory)
    key = load_private_key(private_key_path)
    kid = key_id(key.public_key())
    entry = {
        "algorithm": ALGORITHM,
        "key_id": kid,
        "manifest_sha256": manifest_sha256,
        "signature": base64.b64encode(key.sign(signed_message(manifest_sha256))).decode("ascii"),
        "signed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if signer:
        entry["signer"] = signer
    # A signature of an older manifest (the bundle was re-sealed) is dropped with the same key's.
    kept = [s for s in read_signatures(directory) if s["key_id"] != kid and s["manifest_sha256"] == manifest_sha256]
    body = json.dumps({"format": FORMAT, "signatures": kept + [entry]}, indent=2) + "\n"
    tmp = directory / (SIGNATURES + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, directory / SIGNATURES)
    return entry


# --------------------------------------------------------------- trust
@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    source: str  # the file it was read from
    key: object = field(repr=False, compare=False)


@dataclass(frozen=True)
class TrustPolicy:
    """The public keys a device trusts, and where the list came from. No keys: hash checks only."""

    keys: tuple[TrustedKey, ...] = ()
    origin: str = ""

    @property
    def enforced(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_paths(cls, paths, origin: str) -> "TrustPolicy":
        """Keys from files and folders (every ``*.pub``/``*.pem`` inside). A configured place that holds
        no key is an error: a device told to check signatures must not quietly stop checking."""
        keys: list[TrustedKey] = []
        for place in paths:
            p = Path(place).expanduser()
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in _KEY_SUFFIXES)
                if not files:
                    raise SignatureError(f"{p}: trusted-keys folder ({origin}) holds no *.pub or *.pem key")
            elif p.is_file():
                files = [p]
            else:
                raise SignatureError(f"{p}: no such trusted key file or folder ({origin})")
            for f in files:
                k = load_public_key(f)
                keys.append(TrustedKey(key_id(k), str(f), k))
        if not keys:
            raise SignatureError(f"{origin}: names no trusted key")
        return cls(tuple(keys), origin)

    @classmethod
    def from_environment(cls) -> "TrustPolicy":
        value = os.environ.get(ENV_TRUSTED_KEYS, "")
        if not value.strip():
            return cls()
        return cls.from_paths([v for v in value.split(os.pathsep) if v.strip()], f"${ENV_TRUSTED_KEYS}")

    def describe(self) -> str:
        if not self.keys:
            return f"no trusted keys configured (${ENV_TRUSTED_KEYS} or the stream's trusted_keys): hash check only"
        return f"trusted keys {', '.join(k.key_id for k in self.keys)} ({self.origin})"

    def check(self, directory: Path, manifest_sha256: str) -> TrustedKey:
        """The trusted key whose valid signature the bundle carries; SignatureError otherwise."""
        from cryptography.exceptions import InvalidSignature

        trusted = {k.key_id: k for k in self.keys}
        names = ", ".join(trusted)
        signatures = read_signatures(directory)
        if not signatures:
            raise SignatureError(f"{directory}: unsigned model bundle refused: this device runs only bundles signed by "
                                 f"key {names} ({self.origin}); the maker signs with edgehema sign")
        bad = []
        for s in signatures:
            k = trusted.get(s["key_id"])
            if k is None or s.get("algorithm") != ALGORITHM:
                continue
            if s["manifest_sha256"] != manifest_sha256:
                bad.append(f"key {s['key_id']} signed another manifest ({s['manifest_sha256'][:12]}..., "
                           f"this one is {manifest_sha256[:12]}...: changed after signing)")
                continue
            try:
                k.key.verify(base64.b64decode(s["signature"], validate=True), signed_message(manifest_sha256))
            except (InvalidSignature, ValueError):
                bad.append(f"the signature by key {s['key_id']} does not verify (changed after signing?)")
                continue
            return k
        if bad:
            raise SignatureError(f"{directory}: model bundle refused: {'; '.join(bad)}")
        others = ", ".join(sorted({s["key_id"] for s in signatures}))
        raise SignatureError(f"{directory}: model bundle refused: signed by key {others}, which this device does not "
                             f"trust (trusted: {names}, {self.origin})")

"""Signatures of cache entries, for programs that come from a Hub repo.

A compiled program is native code the app loads and runs. A checksum stored beside it in the same repo proves
that the files are whole, not who wrote them: anyone who can write the repo can plant a library. So an entry
pulled from the Hub is used only when it carries an Ed25519 signature by the key whose public half the Space
holds, or when it was fetched at a commit the Space pins (cache.py). The private key signs where programs are
built and never needs to be on a Space that only loads them.

    public, private = new_key_pair()         # python -m aoti.signing prints a pair, base64
    sign(entry_folder, private)              # writes entry.sig over every other file of the entry
    verify(entry_folder, public)             # SignatureError unless that key signed exactly these files
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_FILE = "entry.sig"
RAW = serialization.Encoding.Raw


class SignatureError(Exception):
    """An entry is unsigned, signed by another key, or changed after it was signed."""


def new_key_pair() -> tuple[str, str]:
    """(public, private) Ed25519 keys as base64 text: the public one a Space variable, the private one a secret."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
    secret = private.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(public).decode(), base64.b64encode(secret).decode()


def digest(entry: Path) -> bytes:
    """SHA-256 over the entry's files, their relative paths and contents, in a fixed order; the signature aside."""
    hash_ = hashlib.sha256()
    for path in sorted(p for p in entry.rglob("*") if p.is_file() and p.name != SIGNATURE_FILE):
        hash_.update(path.relative_to(entry).as_posix().encode() + b"\0")
        hash_.update(hashlib.sha256(path.read_bytes()).digest())
    return hash_.digest()


def sign(entry: Path, private_key: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(_decode(private_key, "signing key"))
    (entry / SIGNATURE_FILE).write_text(base64.b64encode(key.sign(digest(entry))).decode())


def verify(entry: Path, public_key: str) -> None:
    key = Ed25519PublicKey.from_public_bytes(_decode(public_key, "public key"))
    try:
        signature = base64.b64decode((entry / SIGNATURE_FILE).read_text(), validate=True)
    except (OSError, ValueError):
        raise SignatureError(f"{entry.name} has no readable signature ({SIGNATURE_FILE})") from None
    try:
        key.verify(signature, digest(entry))
    except InvalidSignature:
        raise SignatureError(f"{entry.name} is not signed by the Space's key, or changed since it was signed") from None


def _decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"the {what} must be 32 bytes in base64 (python -m aoti.signing makes a pair)")
    return raw


if __name__ == "__main__":
    public, private = new_key_pair()
    print(f"AOTI_HUB_PUBLIC_KEY={public}   (a Space variable)")
    print(f"AOTI_HUB_SIGNING_KEY={private}   (a secret, only where programs are built)")

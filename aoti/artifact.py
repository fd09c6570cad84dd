"""Save and load compiled programs: a folder with the package and a JSON manifest.

Nothing here is pickled: the manifest is JSON and the package is checked against the SHA-256
it records before AOTInductor ever sees it, so a truncated or altered file is an ArtifactError,
not a crash or undefined behaviour at load time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import torch

from .program import CompiledProgram
from .signature import Signature
from .toolchain import ToolchainError, check_package

FORMAT = 1
PACKAGE_FILE = "program.pt2"
MANIFEST_FILE = "manifest.json"


class ArtifactError(RuntimeError):
    """A saved program is missing, corrupt or was made for something else."""


def save(program: CompiledProgram, folder: str | os.PathLike) -> Path:
    """Write `program` into `folder` atomically (files appear complete or not at all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "sha256": hashlib.sha256(program.package).hexdigest(),
        "signature": program.signature.to_json(),
        "weight_names": list(program.weight_names),
        "compile_seconds": program.compile_seconds,
        "weights_as_inputs": program.weights_as_inputs,
        "torch": torch.__version__,
    }
    _write_atomic(folder / PACKAGE_FILE, program.package)
    _write_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    return folder


def load(folder: str | os.PathLike) -> CompiledProgram:
    """Read a program saved by `save`, verifying it; raise ArtifactError on any defect."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        package = (folder / PACKAGE_FILE).read_bytes()
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read a compiled program from {folder}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder / MANIFEST_FILE} is not a format-{FORMAT} manifest")
    if hashlib.sha256(package).hexdigest() != manifest.get("sha256"):
        raise ArtifactError(f"{folder / PACKAGE_FILE} does not match its manifest's checksum (corrupt or altered)")
    if manifest.get("torch") != torch.__version__:
        raise ArtifactError(f"{folder} was compiled with torch {manifest.get('torch')}, this is {torch.__version__}")
    try:
        check_package(package)
    except (ToolchainError, ValueError, zipfile.BadZipFile) as error:
        # E.g. a program cached before compiling cleared the executable-stack flag: compile it again.
        raise ArtifactError(f"{folder / PACKAGE_FILE} cannot be loaded safely: {error}") from error
    try:
        signature = Signature.from_json(manifest["signature"])
        weight_names = tuple(manifest["weight_names"])
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{folder / MANIFEST_FILE} is malformed: {error}") from error
    # The checksum covers the package, not the manifest: a wrong type here would surface only when the program is bound.
    seconds, as_inputs = manifest.get("compile_seconds", 0.0), manifest.get("weights_as_inputs", False)
    if not (all(isinstance(name, str) for name in weight_names) and isinstance(seconds, (int, float))
            and isinstance(as_inputs, bool)):
        raise ArtifactError(f"{folder / MANIFEST_FILE} is malformed: a field of the wrong type")
    return CompiledProgram(package, signature, weight_names, float(seconds), as_inputs)


def _write_atomic(path: Path, data: bytes) -> None:
    # Same-folder temp file + rename: concurrent writers never leave a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Which LoRA a request names: a Hub repo or a file in the LoRA folder, and nothing else.

    owner/name                        the repo's LoRA (pytorch_lora_weights.safetensors, or its only .safetensors)
    owner/name:file.safetensors       that file of the repo (it may be in a subfolder: owner/name:sub/file.safetensors)
    owner/name@revision[:file]        the same at a commit, branch or tag: what a Space pins, as a repo's head can change
    name  or  name.safetensors        assets/loras/name.safetensors, or the LoRA in the folder assets/loras/name/

A request is untrusted text: paths, `..`, URLs and other files than .safetensors are refused here,
before anything is read, with an error that names the field (`lora: ...`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHT_SUFFIX = ".safetensors"
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
SCALE_RANGE = (0.0, 2.0)
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_NAME = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>{_PART}(?:/{_PART})*))?(?::(?P<file>{_PART}(?:/{_PART})*))?")
# Longer than any Hub repo id (96 characters a part), revision and file path a LoRA needs: messages quote the name.
MAX_NAME_CHARS = 300
MAX_LOCAL_CHARS = 200  # a name in the LoRA folder, with ".safetensors" added: under the 255 bytes of a file name
_LOCAL_NAME = re.compile(_PART)
# Files that unpickle when loaded: named so the error says why rather than "not found".
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class LoraError(ValueError):
    """A request's LoRA cannot be used; the message starts with the field: `lora: ...` or `lora_scale: ...`."""

    def __init__(self, message: str, field: str = "lora"):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class HubLora:
    repo: str
    filename: str | None = None  # None: the repo's one LoRA file
    revision: str | None = None  # None: the repo's head

    @property
    def name(self) -> str:
        at = f"{self.repo}@{self.revision}" if self.revision else self.repo
        return f"{at}:{self.filename}" if self.filename else at


@dataclass(frozen=True)
class LocalLora:
    name: str
    path: Path  # a .safetensors file inside the LoRA folder


LoraSource = HubLora | LocalLora


def resolve(name: Any, lora_dir: str | Path) -> LoraSource | None:
    """What `name` refers to, or None for "" (no LoRA). Reads no weights; LoraError if it names nothing allowed."""
    if not isinstance(name, str):
        raise LoraError(f"must be text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        return None
    if len(name) > MAX_NAME_CHARS:
        raise LoraError(f"{name[:60]!r}... is {len(name)} characters, longer than a LoRA name can be ({MAX_NAME_CHARS})")
    if "://" in name or ".." in name or "\\" in name or name.startswith(("/", "~", ".")):
        raise LoraError(
            f"{name!r} is not a LoRA name: give owner/name[@revision][:file.safetensors] (Hub), or the name of a "
            f"LoRA in the Space's LoRA folder; paths and URLs are not loaded"
        )
    if "/" in name or ":" in name:
        return _hub(name)
    return _local(name, Path(lora_dir))


def check_scale(value: Any) -> float:
    """`lora_scale` as a float in SCALE_RANGE, or LoraError naming the field."""
    low, high = SCALE_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # a JSON number, as the API describes it
        raise LoraError(f"must be a number, got {str(value)[:40]!r}", field="lora_scale")
    try:
        scale = float(value)
    except OverflowError:  # an integer beyond any float (10**400)
        raise LoraError(f"must be a number, got {str(value)[:40]!r}", field="lora_scale") from None
    if not (math.isfinite(scale) and low <= scale <= high):
        raise LoraError(f"must be between {low:g} and {high:g}, got {value!r}", field="lora_scale")
    return scale


def _hub(name: str) -> HubLora:
    match = _HUB_NAME.fullmatch(name)
    if not match:
        raise LoraError(f"{name!r} is not a Hub LoRA: write owner/name, owner/name:file.safetensors or owner/name@revision")
    filename = match["file"]
    if filename is not None and not filename.endswith(WEIGHT_SUFFIX):
        raise LoraError(f"only {WEIGHT_SUFFIX} files are loaded, not {filename!r}")
    return HubLora(match["repo"], filename, match["revision"])


def _local(name: str, lora_dir: Path) -> LocalLora:
    if len(name) > MAX_LOCAL_CHARS:  # the file system would refuse the name itself (ENAMETOOLONG)
        raise LoraError(f"{name[:60]!r}... is longer than a LoRA file's name can be ({MAX_LOCAL_CHARS} characters)")
    if not _LOCAL_NAME.fullmatch(name):
        raise LoraError(f"{name!r} is not a LoRA name (letters, digits, '.', '_' and '-')")
    if name.lower().endswith(_PICKLE_SUFFIXES) or ((lora_dir / name).is_file() and not name.endswith(WEIGHT_SUFFIX)):
        raise LoraError(f"only {WEIGHT_SUFFIX} files are loaded, not {name!r}")
    stem = name.removesuffix(WEIGHT_SUFFIX)
    folder = lora_dir / stem
    candidates = [lora_dir / f"{stem}{WEIGHT_SUFFIX}"]
    if folder.is_dir():
        files = sorted(folder.glob(f"*{WEIGHT_SUFFIX}"))
        candidates += [folder / DEFAULT_WEIGHT_NAME] + (files if len(files) == 1 else [])
    for path in candidates:
        if path.is_file():
            # A link in the folder must not lead out of it.
            if not path.resolve().is_relative_to(lora_dir.resolve()):
                raise LoraError(f"{name!r} leads outside the LoRA folder")
            return LocalLora(name, path)
    available = ", ".join(local_names(lora_dir)) or "none"
    raise LoraError(f"no LoRA named {name!r} in the LoRA folder (available: {available}); a Hub LoRA is owner/name")


def local_names(lora_dir: str | Path) -> list[str]:
    """The names of the LoRAs in `lora_dir`, for a UI's choices and for error messages."""
    lora_dir = Path(lora_dir)
    if not lora_dir.is_dir():
        return []
    names = [p.stem for p in lora_dir.glob(f"*{WEIGHT_SUFFIX}")]
    names += [p.name for p in lora_dir.iterdir() if p.is_dir() and any(p.glob(f"*{WEIGHT_SUFFIX}"))]
    return sorted(n for n in names if _LOCAL_NAME.fullmatch(n))

"""Reading a LoRA file into low-rank factors per layer, with an LRU of the LoRAs read.

The file is read as safetensors only (never unpickled), and converted by diffusers' own
`FluxPipeline.lora_state_dict`: diffusers/PEFT, kohya, xlabs and BFL files all come out as
PEFT `lora_A`/`lora_B` pairs. Each layer's scaling (alpha / rank, per PEFT's rank and alpha
patterns) is resolved the way `load_lora_weights` configures PEFT, so that fusing the factors
gives the layer diffusers would compute.

A visitor's file is untrusted, and PEFT treats layer names as regular expressions (`get_pattern_key`): a name such
as `([a-z_.0-9]+)+Q` backtracks for minutes while holding the interpreter lock, and every other visitor waits. So
strings from a file never reach a regex engine: before diffusers reads the file, its header is bounded in size and
tensor count and every tensor name must be a plain dotted name; the metadata keeps only the LoRA settings used here,
its patterns checked the same way; ranks and alphas are looked up by name (`_pattern_key`), not by regex.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import torch
from diffusers import FluxPipeline
from diffusers.utils.peft_utils import _create_lora_config
from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

from config import AppConfig

from .names import DEFAULT_WEIGHT_NAME, WEIGHT_SUFFIX, HubLora, LocalLora, LoraError, LoraSource, resolve

log = logging.getLogger("lora")
# The pipeline parts a FLUX LoRA may change, as diffusers' FluxLoraLoaderMixin loads them.
ROOTS = ("transformer", "text_encoder")
UNPREFIXED_TRANSFORMER_LAYERS = {"x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out"}
# A plain dotted name: letters, digits, "_" between dots. Every format's layer names are such names (diffusers,
# kohya's lora_unet_..., XLabs' double_blocks.0.processor..., BFL's diffusion_model...).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
MAX_NAME_LENGTH = 256
# FLUX.1 has about 470 linear layers in the transformer and 72 in CLIP; a LoRA stores up to four tensors per layer
# (down, up, alpha, bias). Twice that, for formats that split a layer (XLabs' qkv).
MAX_TENSORS = 2 * 4 * 600
MAX_HEADER_BYTES = 8 << 20  # a full-model LoRA's header is about 0.3 MB
# The largest file read: FLUX LoRAs are 20-600 MB (rank 128 over every linear, bf16: about 1.3 GB). Checked from the
# Hub's metadata before a download, so a visitor cannot make the Space fetch (and keep on disk) anything larger.
MAX_FILE_BYTES = 2 << 30
# The LoRA settings diffusers' metadata may carry that this module uses; any other field (target_modules, a regex
# string to PEFT, among them) is dropped.
CONFIG_FIELDS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora")


@dataclass(frozen=True)
class Factors:
    """One layer's LoRA: its weight changes by scaling * up @ down (and its bias by scaling * up_bias)."""

    down: torch.Tensor  # lora_A: (rank, in_features)
    up: torch.Tensor  # lora_B: (out_features, rank)
    scaling: float  # PEFT's lora_alpha / r (or / sqrt(r) for rsLoRA)
    up_bias: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.up.shape[0], self.down.shape[1]

    def add_to(self, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """weight += scale * scaling * up @ down, in one matmul into `weight` (float32)."""
        up, down = self.up.to(weight.device, weight.dtype), self.down.to(weight.device, weight.dtype)
        return weight.addmm_(up, down, alpha=scale * self.scaling)


@dataclass(frozen=True)
class Lora:
    name: str
    key: tuple  # what identifies this content: the name and the file's size and modification time
    factors: Mapping[str, Factors]  # by layer, prefixed with its root: "transformer.x_embedder"

    @property
    def roots(self) -> set[str]:
        return {layer.split(".", 1)[0] for layer in self.factors}

    @property
    def nbytes(self) -> int:
        tensors = [t for f in self.factors.values() for t in (f.down, f.up, f.up_bias) if t is not None]
        return sum(t.nbytes for t in tensors)


def hub_file(source: HubLora, token: str | bool = False, folder: Path | None = None) -> Path:
    """The LoRA file of a Hub repo at its revision, downloaded into `folder` (a Hub cache) or found there, if it is at most
    MAX_FILE_BYTES. `token`: False for anonymous access (huggingface_hub would otherwise send HF_TOKEN by itself), or
    the token to send. A stalled transfer ends after huggingface_hub's read timeout (HF_HUB_DOWNLOAD_TIMEOUT)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, list_repo_files

    try:
        files = None if source.filename else list_repo_files(source.repo, revision=source.revision, token=token)
        filename = source.filename or _pick_weight_file(source, files)
        if not constants.HF_HUB_OFFLINE:  # offline, only a file already in the Hub cache is read (check_header bounds it)
            url = hf_hub_url(source.repo, filename, revision=source.revision)
            size = get_hf_file_metadata(url, token=token).size
            if size is not None and size > MAX_FILE_BYTES:
                raise LoraError(f"{source.name!r} is {size / 1e9:.1f} GB, over the {MAX_FILE_BYTES / 1e9:.1f} GB a LoRA may be")
        return Path(hf_hub_download(source.repo, filename, revision=source.revision, token=token, cache_dir=folder))
    except LoraError:
        raise
    except Exception as error:  # not found, private, gated, no network, ...
        if token is not False:  # the owner's own list: the owner may read the details
            raise LoraError(f"could not download {source.name!r} from the Hub: {type(error).__name__}: {error}") from None
        # One message whatever the cause: a visitor learns nothing about repos they cannot read.
        raise LoraError(f"could not download {source.name!r}: no public LoRA of that name, or the Hub is unreachable") from None


def default_download_folder() -> Path:
    """A Hub cache of LoRAs alone, beside the models' (under HF_HOME, persistent storage's on a Space that has it):
    evicting it by size can never remove the model."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "loras"


def evict_downloads(folder: Path, max_bytes: int, keep: Path) -> None:
    """Delete the least recently used repos of the LoRA download folder until it holds at most `max_bytes`, never the
    repo `keep` is in: visitors name any LoRA they like, and the disk it lands on is the Space's."""
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir(folder)
    size = cache.size_on_disk
    for repo in sorted(cache.repos, key=lambda repo: repo.last_accessed):
        if size <= max_bytes:
            break
        if keep.is_relative_to(repo.repo_path):
            continue
        cache.delete_revisions(*(revision.commit_hash for revision in repo.revisions)).execute()
        size -= repo.size_on_disk
        log.info("deleted the download of LoRA %s (%.0f MB): the folder is over %.1f GB", repo.repo_id,
                 repo.size_on_disk / 1e6, max_bytes / 1e9)


def _pick_weight_file(source: HubLora, files: list[str]) -> str:
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIX) and "/" not in f]
    if DEFAULT_WEIGHT_NAME in weights:
        return DEFAULT_WEIGHT_NAME
    if len(weights) == 1:
        return weights[0]
    if not weights:
        raise LoraError(f"{source.repo!r} has no {WEIGHT_SUFFIX} file at its top level: name one as owner/name:path")
    raise LoraError(f"{source.repo!r} has several LoRA files ({', '.join(weights)}): name one as {source.repo}:{weights[0]}")


def shown(text: str, limit: int = 60) -> str:
    """`text` quoted for an error message, cut at `limit` characters: messages never echo huge inputs."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_header(name: str, path: Path) -> None:
    """LoraError unless `path` is a safetensors file of bounded header whose tensor names are plain dotted names."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LoraError(f"{name!r} is {size / 1e9:.1f} GB, over the {MAX_FILE_BYTES / 1e9:.1f} GB a LoRA may be")
    with open(path, "rb") as file:
        header = int.from_bytes(file.read(8), "little")
    if header > size - 8:  # a pickle's or any other file's first bytes
        raise LoraError(f"{name!r} is not a safetensors file")
    if header > MAX_HEADER_BYTES:
        raise LoraError(f"{name!r} has a {header / 1e6:.0f} MB header, over the {MAX_HEADER_BYTES / 1e6:.0f} MB a LoRA needs")
    try:
        with safetensors.safe_open(str(path), "pt") as file:  # parses the header only: a pickle or other file fails here
            keys = list(file.keys())
    except Exception:
        raise LoraError(f"{name!r} is not a safetensors file") from None
    if len(keys) > MAX_TENSORS:
        raise LoraError(f"{name!r} holds {len(keys)} tensors, more than a FLUX LoRA can ({MAX_TENSORS})")
    for key in keys:
        if len(key) > MAX_NAME_LENGTH or not PLAIN_NAME.fullmatch(key):
            raise LoraError(f"{name!r} has a tensor whose name is not a layer name: {shown(key)}")


def read_lora(name: str, path: Path) -> Lora:
    """The factors of the LoRA file at `path` (safetensors only), converted and scaled as diffusers would."""
    check_header(name, path)
    try:
        state, alphas, metadata = FluxPipeline.lora_state_dict(
            str(path.parent), weight_name=path.name, use_safetensors=True, local_files_only=True,
            return_alphas=True, return_lora_metadata=True,
        )
    except Exception as error:  # the converters raise ValueError, KeyError, AssertionError on files they do not know
        raise LoraError(f"{name!r} is not a FLUX LoRA diffusers can read: {type(error).__name__}: {error}") from None
    stat = path.stat()
    return Lora(name, (name, stat.st_size, stat.st_mtime_ns), _factors(name, state, alphas or {}, metadata))


def _factors(name: str, state: dict, alphas: dict, metadata: dict | None) -> dict[str, Factors]:
    # diffusers' kohya converter names the transformer's outer layers without "transformer." (img_in ->
    # "x_embedder"), and load_lora_weights then drops them without a word; they are the transformer's.
    state = {f"transformer.{k}" if k.split(".", 1)[0] in UNPREFIXED_TRANSFORMER_LAYERS else k: v for k, v in state.items()}
    others = sorted({key.split(".", 1)[0] for key in state} - set(ROOTS))
    if others:
        raise LoraError(f"{name!r} changes {', '.join(others)}: only the transformer and the CLIP text encoder can be changed")
    factors = {}
    for root in ROOTS:
        part = {k.removeprefix(f"{root}."): v for k, v in state.items() if k.startswith(f"{root}.")}
        if part:
            root_metadata = None if metadata is None else {
                k.removeprefix(f"{root}."): v for k, v in metadata.items() if k.startswith(f"{root}.")
            }
            root_alphas = {k.removeprefix(f"{root}."): v for k, v in alphas.items() if k.startswith(f"{root}.")}
            for layer, f in _root_factors(name, root, part, root_alphas, root_metadata).items():
                factors[f"{root}.{layer}"] = f
    if not factors:
        raise LoraError(f"{name!r} holds no LoRA layers")
    return factors


def _root_factors(name: str, root: str, state: dict, alphas: dict, metadata: dict | None) -> dict[str, Factors]:
    """As diffusers prepares one model's part before handing it to PEFT (load_lora_adapter / _load_lora_into_text_encoder)."""
    transformer = root == "transformer"
    if not transformer:
        state = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state))
    unknown = sorted(k for k in state if not k.endswith((".lora_A.weight", ".lora_B.weight", ".lora_B.bias")))
    if unknown:  # Control LoRAs' norm layers, DoRA magnitudes, LoKr, embeddings...
        raise LoraError(f"{name!r} changes more than LoRA layers (e.g. {unknown[0]}): not supported")
    layers = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    incomplete = [layer for layer in layers if f"{layer}.lora_A.weight" not in state or f"{layer}.lora_B.weight" not in state]
    if incomplete:
        raise LoraError(f"{name!r} has a layer without its lora_A or lora_B weight: {incomplete[0]}")
    for layer in layers:  # before PEFT's config, which a rank of 0 would fail with its own message
        down, up = state[f"{layer}.lora_A.weight"], state[f"{layer}.lora_B.weight"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            shapes = f"{tuple(down.shape)}, {tuple(up.shape)}"
            raise LoraError(f"{name!r}: {root}.{layer} is not a linear layer's LoRA (shapes {shapes})")
        if not 1 <= down.shape[0] <= max(down.shape[1], up.shape[0]):  # beyond that it is no longer low-rank
            raise LoraError(f"{name!r}: {root}.{layer} has rank {down.shape[0]}, outside 1..{max(down.shape[1], up.shape[0])}")
        bias = state.get(f"{layer}.lora_B.bias")
        # A NaN or an infinity would turn every image it touches black, without a word.
        if not all(t.isfinite().all() for t in (down, up) + (() if bias is None else (bias,))):
            raise LoraError(f"{name!r}: {root}.{layer} holds values that are not finite (NaN or infinity)")
    # As diffusers builds the rank patterns (anchored with "^" for the transformer, not for CLIP).
    ranks = {
        (f"^{layer}" if transformer else layer) + ".lora_B.weight": state[f"{layer}.lora_B.weight"].shape[1]
        for layer in layers
    }
    config = _create_lora_config(state, alphas or None, _lora_settings(name, metadata) or None, ranks, is_unet=transformer)
    if config.use_dora:
        raise LoraError(f"{name!r} is a DoRA: not supported")
    factors = {}
    for layer in layers:
        r = config.rank_pattern.get(_pattern_key(config.rank_pattern, layer), config.r)
        alpha = config.alpha_pattern.get(_pattern_key(config.alpha_pattern, layer), config.lora_alpha)
        down, up = state[f"{layer}.lora_A.weight"], state[f"{layer}.lora_B.weight"]
        scaling = alpha / (math.sqrt(r) if config.use_rslora else r)
        if not math.isfinite(scaling):
            raise LoraError(f"{name!r}: {root}.{layer}'s alpha is not finite")
        bias = state.get(f"{layer}.lora_B.bias")
        # Copied out of the file's memory map: the disk is read here, not by the first fuse, and a file replaced
        # on disk cannot change (or crash) a LoRA in use.
        factors[layer] = Factors(down.clone(), up.clone(), float(scaling), None if bias is None else bias.clone())
    return factors


def _lora_settings(name: str, metadata: dict | None) -> dict | None:
    """The LoRA settings of a file's metadata (CONFIG_FIELDS), its rank and alpha patterns keyed by plain names."""
    if metadata is None:
        return None
    settings = {key: value for key, value in metadata.items() if key in CONFIG_FIELDS}
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = settings.get(field) or {}
        if not isinstance(patterns, dict) or len(patterns) > MAX_TENSORS:
            raise LoraError(f"{name!r}: its metadata's {field} is not a table of layers")
        for key in patterns:
            if not isinstance(key, str) or len(key) > MAX_NAME_LENGTH or not PLAIN_NAME.fullmatch(key.removeprefix("^")):
                raise LoraError(f"{name!r}: its metadata's {field} names something that is not a layer: {shown(str(key))}")
    return settings


def _pattern_key(patterns: Mapping[str, float], layer: str) -> str | None:
    """The key of a rank or alpha pattern that applies to `layer`, as peft's `get_pattern_key` matches plain names
    (the first key that is the layer's name or a dotted suffix of it; "^" anchors it at the start), with no regex."""
    for key in patterns:
        plain = key.removeprefix("^")
        if layer == plain or (not key.startswith("^") and layer.endswith(f".{plain}")):
            return key
    return None


class LoraLibrary:
    """Turns a request's `lora` text into a Lora, keeping the most recently used ones read within `max_bytes` of host
    memory (by their factors' size, not their count: one LoRA may be 20 MB, another 1.3 GB), and always the last one.

    `lora_dir` is the folder of local LoRAs; Hub LoRAs go through the Hub cache (`download`). Only the repos in
    `trusted` (the Space owner's own list) are fetched with HF_TOKEN; any other a request names is fetched
    anonymously, so that a visitor can neither read the owner's private or gated repos nor learn which exist.
    Thread-safe; a forked process starts with the parent's LoRAs read.
    """

    def __init__(
        self, lora_dir: str | Path, max_bytes: int = AppConfig().lora_cache_bytes,
        download: Callable[[HubLora], Path] | None = None, trusted: Iterable[str] = (),
        download_folder: Path | None = None, download_max_bytes: int = AppConfig().lora_downloads_bytes,
    ):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.lora_dir = Path(lora_dir)
        self.max_bytes = max_bytes
        self.trusted = {resolved.repo for name in trusted if isinstance(resolved := resolve(name, lora_dir), HubLora)}
        self.download_folder = download_folder or default_download_folder()
        self.download_max_bytes = download_max_bytes
        self.download = download or (lambda source: hub_file(source, self.token_for(source), self.download_folder))
        self._disk = threading.Lock()  # a download is read before any eviction can delete it
        self._read: OrderedDict[LoraSource, Lora] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files read so far: what the cache saves

    def token_for(self, source: HubLora) -> str | bool:
        """HF_TOKEN for the owner's own repos, else False: anonymous."""
        return (os.environ.get("HF_TOKEN") or False) if source.repo in self.trusted else False

    def resolve(self, name: object) -> LoraSource | None:
        return resolve(name, self.lora_dir)

    def load(self, name: object) -> Lora | None:
        """The LoRA `name` names (None for ""), read or from the cache; LoraError if it cannot be used."""
        source = self.resolve(name)
        if source is None:
            return None
        with self._lock:
            if source in self._read:
                self._read.move_to_end(source)
                return self._read[source]
        if isinstance(source, LocalLora):
            lora = read_lora(source.name, source.path)
        else:
            with self._disk:
                path = Path(self.download(source))
                lora = read_lora(source.name, path)
                if path.is_relative_to(self.download_folder):
                    evict_downloads(self.download_folder, self.download_max_bytes, keep=path)
        with self._lock:
            self.reads += 1
            self._read[source] = lora
            self._read.move_to_end(source)
            while len(self._read) > 1 and sum(kept.nbytes for kept in self._read.values()) > self.max_bytes:
                self._read.popitem(last=False)
        return lora

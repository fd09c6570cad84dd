"""Fusing a LoRA into the weights the compiled programs already read, in place.

    W = master + scale * scaling * up @ down        (then re-quantized per row with FP8)

Only layers whose value changes are written: those of the LoRA being left and of the one being
applied; the same LoRA and scale again writes nothing. No program is recompiled or reloaded and
no tensor is reallocated, so CUDA graphs captured before stay valid.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator, Mapping

import torch

from fp8 import quantized_weight

from .library import Factors, Lora
from .masters import master_device, settle
from .names import LoraError
from .slots import Slot, find_slots

# With fused QKV (AOTI_FUSE_QKV) a LoRA's q, k and v layers are row blocks of one projection.
FUSED_QKV = {
    "to_q": ("to_qkv", 0), "to_k": ("to_qkv", 1), "to_v": ("to_qkv", 2),
    "add_q_proj": ("to_added_qkv", 0), "add_k_proj": ("to_added_qkv", 1), "add_v_proj": ("to_added_qkv", 2),
}


class LoraFuser:
    """Applies at most one LoRA at a time to a compiled (or eager) pipeline's layers.

    `roots` are the modules a LoRA may change, by the names LoRA files use ("transformer",
    "text_encoder"). `masters` (from `keep_masters`, taken before FP8 quantization) are needed
    for FP8 layers; other layers' masters are copied on first use. `fp8_granularity` is the one
    the base weights were quantized with (the plan's). `masters_on_gpu`: the card has room to keep
    every master (`Plan.fits_beside`); else they stay in host memory and each write copies its layer's.

    What is fused is state of this process, like the weights it describes: a forked process
    (a ZeroGPU worker) inherits both together, and keeps its own from then on.
    """

    def __init__(
        self, roots: Mapping[str, torch.nn.Module], masters: Mapping[str, torch.Tensor] | None = None,
        fp8_granularity: str | None = "row", masters_on_gpu: bool = False,
    ):
        self.slots = find_slots(roots)
        self.fp8_granularity = fp8_granularity
        self.masters_on_gpu = masters_on_gpu
        # Masters that are not the live weight itself (without FP8 they are: copied on first use instead).
        own = {
            layer: master for layer, master in (masters or {}).items()
            if layer in self.slots and not _same_memory(master, self.slots[layer].live)
        }
        device = next((slot.live.device for slot in self.slots.values()), torch.device("cpu"))
        self._masters = settle(own, device, masters_on_gpu)  # layer -> unquantized weight, never read by a program
        self._bias_masters: dict[str, torch.Tensor] = {}
        self._masters.update(self._fused_qkv_masters(masters or {}))
        missing = [layer for layer, slot in self.slots.items() if slot.fp8 and layer not in self._masters]
        if missing:
            raise ValueError(
                f"{len(missing)} FP8 layers have no master (e.g. {missing[0]}): call keep_masters before optimize_pipeline_"
            )
        self.lock = threading.RLock()  # held by activate, and by the app across activate + generate
        self._active: tuple | None = None  # (lora key, scale) fused now; None: the base weights
        self._written: set[str] = set()  # layers that differ from their master
        _reset_lock_after_fork(self)

    @property
    def active(self) -> tuple | None:
        return self._active

    @contextlib.contextmanager
    def applied(self, lora: Lora | None, scale: float = 1.0) -> Iterator[None]:
        """`lora` at `scale` fused for the duration: hold it around a generation so no other request's LoRA
        can be fused before the image is made."""
        with self.lock:
            self.activate(lora, scale)
            yield

    def activate(self, lora: Lora | None, scale: float = 1.0) -> bool:
        """Fuse `lora` at `scale` (None or scale 0: the base weights); whether any weight was written.

        Checked before anything is written: a LoRA that does not fit raises LoraError and changes nothing.
        """
        scale = float(scale)
        wanted = None if lora is None or scale == 0 else (lora.key, scale)
        with self.lock:
            if wanted == self._active:
                return False
            plan = self.plan(lora) if wanted else {}
            # Marked unknown while writing: after a failure half way, the next activation rewrites all of them.
            self._active, self._written = ("writing",), self._written | set(plan)
            with torch.inference_mode():
                for layer in sorted(self._written):
                    self._write(self.slots[layer], plan.get(layer, []), scale)
            self._active, self._written = wanted, set(plan)
            return True

    def plan(self, lora: Lora) -> dict[str, list[tuple[Factors, slice | None]]]:
        """Per layer to write: its factors and the rows they change (None: all). LoraError if one does not fit."""
        plan: dict[str, list[tuple[Factors, slice | None]]] = {}
        for layer, factors in lora.factors.items():
            slot, rows = self._locate(lora, layer)
            out, cols = slot.shape
            if rows is not None:
                out = rows.stop - rows.start
            if factors.shape != (out, cols):
                raise LoraError(
                    f"{lora.name!r} changes the shape of {layer} from {cols}->{out} to "
                    f"{factors.shape[1]}->{factors.shape[0]} features: LoRAs that reshape layers (Control LoRAs) "
                    "are not supported"
                )
            if factors.up_bias is not None and slot.bias is None:
                raise LoraError(f"{lora.name!r} adds a bias to {layer}, which has none")
            plan.setdefault(slot.layer, []).append((factors, rows))
        return plan

    def _locate(self, lora: Lora, layer: str) -> tuple[Slot, slice | None]:
        if layer in self.slots:
            return self.slots[layer], None
        # CLIP checkpoints name its layers with or without "text_model." (diffusers accepts both).
        root, _, rest = layer.partition(".")
        for alias in (f"{root}.text_model.{rest}", f"{root}.{rest.removeprefix('text_model.')}"):
            if alias in self.slots:
                return self.slots[alias], None
        parent, _, leaf = layer.rpartition(".")
        if leaf in FUSED_QKV:
            fused, block = FUSED_QKV[leaf]
            slot = self.slots.get(f"{parent}.{fused}")
            if slot is not None:
                size = slot.shape[0] // 3
                return slot, slice(block * size, (block + 1) * size)
        if root not in {name.split(".", 1)[0] for name in self.slots}:
            raise LoraError(f"{lora.name!r} changes the {root}, which cannot take a LoRA here")
        raise LoraError(f"{lora.name!r} changes {layer}, a layer this model does not have")

    def _write(self, slot: Slot, parts: list[tuple[Factors, slice | None]], scale: float) -> None:
        master = self._master(slot)
        device = slot.live.device
        if parts:
            weight = master.to(device).to(torch.float32, copy=True)  # moved in its own dtype, widened on the GPU
            for factors, rows in parts:
                factors.add_to(weight[rows if rows is not None else slice(None)], scale)
            weight = weight.to(master.dtype)
        else:
            weight = master.to(device, copy=True)
        weight = _stored(slot, weight)
        if slot.fp8:
            quantized = quantized_weight(weight, self.fp8_granularity)
            slot.qdata.copy_(quantized.qdata)
            slot.scale.copy_(quantized.scale.reshape(slot.scale.shape))
        else:
            slot.weight.copy_(weight)
        biased = [(f, rows) for f, rows in parts if f.up_bias is not None]
        if biased or slot.layer in self._bias_masters:
            bias = self._bias_master(slot).to(device, torch.float32, copy=True)
            for factors, rows in biased:
                bias[rows if rows is not None else slice(None)] += factors.up_bias.to(device, torch.float32) * (
                    factors.scaling * scale
                )
            slot.bias.copy_(_stored(slot, bias))

    def _master(self, slot: Slot) -> torch.Tensor:
        master = self._masters.get(slot.layer)
        if master is None:
            # The live weight still holds the base: a layer is written only after its master is taken.
            master = _copy_to(slot.weight, master_device(slot.live.device, self.masters_on_gpu), slot.rows)
        elif master.device != (device := master_device(slot.live.device, self.masters_on_gpu)):
            # A host master (on ZeroGPU, the main process's, inherited by this worker) moves to the GPU on first
            # use where the plan leaves room: this process's later switches then copy nothing from the host.
            master = _copy_to(master, device)
        self._masters[slot.layer] = master
        return master

    def _bias_master(self, slot: Slot) -> torch.Tensor:
        if slot.layer not in self._bias_masters:
            device = master_device(slot.bias.device, self.masters_on_gpu)
            self._bias_masters[slot.layer] = _copy_to(slot.bias, device, slot.rows)
        return self._bias_masters[slot.layer]

    def _fused_qkv_masters(self, masters: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masters of fused projections, from those of the q, k, v layers kept before fusing (as diffusers fuses)."""
        fused = {}
        for layer, slot in self.slots.items():
            parent, _, leaf = layer.rpartition(".")
            parts = [f"{parent}.{name}" for name, (target, _) in FUSED_QKV.items() if target == leaf]
            if parts and layer not in masters and all(p in masters for p in parts):
                fused[layer] = torch.cat([masters[p] for p in parts])
        return fused


def _stored(slot: Slot, rows: torch.Tensor) -> torch.Tensor:
    """A weight's or bias's rows in the order the slot stores them (masters and LoRAs are in the layer's order)."""
    return rows if slot.rows is None else rows[slot.rows.to(rows.device)]


def _copy_to(tensor: torch.Tensor, device: torch.device, stored_rows: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of `tensor` on `device`; of a live tensor whose rows are stored as `stored_rows` (`Slot.rows`), in the
    layer's order."""
    with torch.inference_mode(False), torch.no_grad():
        tensor = tensor.detach()
        if stored_rows is not None:
            tensor = tensor[torch.argsort(stored_rows).to(tensor.device)]
        return tensor.to(device, copy=True)


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _reset_lock_after_fork(fuser: LoraFuser) -> None:
    """A fork copies a lock in the state it was in: one held by another thread would never be released in the child."""
    ref = weakref.ref(fuser)

    def reset() -> None:
        alive = ref()
        if alive is not None:
            alive.lock = threading.RLock()

    os.register_at_fork(after_in_child=reset)

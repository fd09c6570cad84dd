"""The call contract of a compiled program: which inputs it accepts, checked before every call.

AOTInductor does not check its inputs: a shape outside the compiled range returns garbage or
crashes the process, and a non-tensor argument is silently replaced by the value seen at export.
A `Signature` records what the program was built for and turns any other call into a ValueError.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from .capture import CapturedCall

# The dynamic axes of a call: top-level argument (keyword name, or position) -> {axis: Dim}.
DynamicAxes = Mapping[str | int, Mapping[int, "Dim"]]


@dataclass(frozen=True)
class Dim:
    """A named dynamic dimension with an inclusive range; axes that share a name share a size.

    `dim + k` is an axis always k longer (FLUX's rotary table spans text + image tokens).
    With `multiple`, every size is a multiple of it, and the compiler knows: kernels whose
    length is then a multiple of their largest block drop their bounds masks, as in a static graph.
    """

    name: str
    min: int
    max: int
    offset: int = 0
    multiple: int = 1

    def __post_init__(self) -> None:
        if not 2 <= self.min <= self.max:
            raise ValueError(f"Dim {self.name}: need 2 <= min <= max, got {self.min}..{self.max}")
        if self.multiple < 1 or self.min % self.multiple or self.max % self.multiple:
            raise ValueError(f"Dim {self.name}: min and max must be multiples of {self.multiple}")

    def __add__(self, offset: int) -> Dim:
        return dataclasses.replace(self, offset=self.offset + offset)

    @property
    def base(self) -> Dim:
        return dataclasses.replace(self, offset=0)

    @property
    def key(self) -> str:
        """How a tensor spec names this axis: `name`, or `name+offset`."""
        return f"{self.name}{self.offset:+d}" if self.offset else self.name

    def admits(self, size: int) -> bool:
        """Whether an axis of this Dim (offset included) can have `size`."""
        size -= self.offset
        return self.min <= size <= self.max and size % self.multiple == 0

    def to_export(self, export_dims: dict[str, torch.export.Dim]) -> Any:
        base = export_dims.get(self.name)
        if base is None:
            if self.multiple == 1:
                base = torch.export.Dim(self.name, min=self.min, max=self.max)
            else:  # a derived dim: the size is `multiple` times a free symbol
                unit = torch.export.Dim(f"{self.name}_over_{self.multiple}", min=self.min // self.multiple,
                                        max=self.max // self.multiple)
                base = self.multiple * unit
            export_dims[self.name] = base
        return base + self.offset if self.offset else base


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    device_type: str
    shape: tuple[int | str, ...]  # an int is a static size, a str the name of a Dim


@dataclass(frozen=True)
class Signature:
    """Tree structure, tensor specs and frozen non-tensor values of the accepted calls."""

    treespec: str
    leaves: tuple[tuple[str, TensorSpec | Any], ...]  # (path, spec or frozen value)
    dims: tuple[Dim, ...] = field(default=())

    @classmethod
    def from_call(cls, call: CapturedCall, dynamic: DynamicAxes | None = None) -> Signature:
        dynamic = dynamic or {}
        named = _top_level(call.args, call.kwargs or {})
        unknown = set(dynamic) - set(named)
        if unknown:
            raise ValueError(f"dynamic axes name arguments the call does not have: {sorted(map(str, unknown))}")
        dims: dict[str, Dim] = {}
        leaves = []
        flat, spec = pytree.tree_flatten_with_path((call.args, call.kwargs or {}))
        for path, value in flat:
            key = _keystr(path)
            if not isinstance(value, torch.Tensor):
                _check_json(key, value)
                leaves.append((key, value))
                continue
            axes = dynamic.get(_top_key(path), {})
            shape: list[int | str] = list(value.shape)
            for axis, dim in axes.items():
                if dims.setdefault(dim.name, dim.base) != dim.base:
                    raise ValueError(f"two different Dims are named {dim.name!r}")
                if not dim.admits(value.shape[axis]):
                    raise ValueError(f"{key} axis {axis} = {value.shape[axis]} is outside {dim}")
                shape[axis] = dim.key
            leaves.append((key, TensorSpec(str(value.dtype).removeprefix("torch."), value.device.type, tuple(shape))))
        for name, axes in dynamic.items():
            # Axes of a tuple argument (FLUX's rotary cos/sin) apply to each tensor in it.
            if axes and not any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(named[name])):
                raise ValueError(f"dynamic axes given for {name!r}, which holds no tensor")
        return cls(pytree.treespec_dumps(spec), tuple(leaves), tuple(dims.values()))

    def check(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The call's tensors in the compiled order; ValueError unless the program was compiled for such a call."""
        flat, spec = pytree.tree_flatten((args, self._in_captured_order(kwargs)))
        if spec != self._treespec:
            raise ValueError(f"the call's arguments do not match the compiled call: expected {self._treespec}, got {spec}")
        sizes: dict[str, tuple[int, str]] = {}
        tensors = []
        for value, (key, expected) in zip(flat, self.leaves, strict=True):
            if not isinstance(expected, TensorSpec):
                if isinstance(value, torch.Tensor) or value != expected:
                    raise ValueError(
                        f"{key} = {value!r}, but the program was compiled with {key} = {expected!r} "
                        "(non-tensor arguments are frozen at export)"
                    )
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{key} must be a tensor, got {type(value).__name__}")
            tensors.append(value)
            dtype = str(value.dtype).removeprefix("torch.")
            if dtype != expected.dtype or value.device.type != expected.device_type:
                raise ValueError(
                    f"{key} is {dtype} on {value.device.type}, the program expects {expected.dtype} on {expected.device_type}"
                )
            if value.dim() != len(expected.shape):
                raise ValueError(f"{key} has shape {tuple(value.shape)}, the program expects {len(expected.shape)} dims")
            for axis, (size, want) in enumerate(zip(value.shape, expected.shape)):
                if isinstance(want, int):
                    if size != want:
                        raise ValueError(f"{key} has shape {tuple(value.shape)}, the program expects {expected.shape}")
                    continue
                dim = self._axes[want]
                if not dim.admits(size):
                    step = f" in steps of {dim.multiple}" if dim.multiple > 1 else ""
                    raise ValueError(
                        f"{key} axis {axis} = {size} is outside the compiled range "
                        f"{dim.min + dim.offset}..{dim.max + dim.offset}{step} of {dim.key!r}"
                    )
                seen = sizes.setdefault(dim.name, (size - dim.offset, key))
                if seen[0] != size - dim.offset:
                    raise ValueError(
                        f"inconsistent {dim.name!r}: {seen[1]} gives {seen[0]}, {key} axis {axis} "
                        f"({dim.key}) gives {size - dim.offset}"
                    )
        return tensors

    @functools.cached_property
    def _treespec(self) -> pytree.TreeSpec:
        # Parsed once: `check` runs before every denoising step.
        return pytree.treespec_loads(self.treespec)

    @functools.cached_property
    def _axes(self) -> dict[str, Dim]:
        # Axis names in tensor specs ("image_seq", "image_seq+512") -> the Dim they stand for.
        bases = {dim.name: dim for dim in self.dims}
        axes = {}
        for _, spec in self.leaves:
            for name in spec.shape if isinstance(spec, TensorSpec) else ():
                if isinstance(name, str):
                    base, offset = re.fullmatch(r"(.+?)([+-]\d+)?", name).groups()
                    axes[name] = bases[base] + int(offset or 0)
        return axes

    def _in_captured_order(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """`kwargs` in the order the program was captured with: keyword order is not part of a call."""
        captured = self._treespec.child(1).context
        if set(kwargs) != set(captured):
            missing, extra = sorted(set(captured) - set(kwargs)), sorted(set(kwargs) - set(captured))
            raise ValueError(f"the call's keywords do not match the compiled call: missing {missing}, unexpected {extra}")
        return {name: kwargs[name] for name in captured}

    def export_dynamic_shapes(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
        """The `dynamic_shapes` argument of torch.export for this call, mirroring its tree."""
        export_dims: dict[str, torch.export.Dim] = {}
        specs = iter(spec for _, spec in self.leaves)

        def leaf(value: Any) -> Any:
            spec = next(specs)
            if not isinstance(spec, TensorSpec):
                return None
            return {
                axis: self._axes[s].to_export(export_dims) for axis, s in enumerate(spec.shape) if isinstance(s, str)
            } or None

        return pytree.tree_map(leaf, (tuple(args), dict(kwargs)))

    def to_json(self) -> str:
        leaves = [
            [key, {"tensor": [v.dtype, v.device_type, list(v.shape)]} if isinstance(v, TensorSpec) else {"value": v}]
            for key, v in self.leaves
        ]
        dims = [dataclasses.astuple(d) for d in self.dims]
        return json.dumps({"treespec": self.treespec, "leaves": leaves, "dims": dims})

    @classmethod
    def from_json(cls, text: str) -> Signature:
        data = json.loads(text)
        leaves = tuple(
            (key, TensorSpec(v["tensor"][0], v["tensor"][1], tuple(v["tensor"][2])) if "tensor" in v else v["value"])
            for key, v in data["leaves"]
        )
        return cls(data["treespec"], leaves, tuple(Dim(*d) for d in data["dims"]))


def _top_level(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str | int, Any]:
    return {**dict(enumerate(args)), **kwargs}


def _top_key(path: tuple[Any, ...]) -> str | int:
    # path[0] selects args (0) or kwargs (1); path[1] the position or keyword.
    entry = path[1]
    return entry.idx if isinstance(entry, pytree.SequenceKey) else entry.key


def _keystr(path: tuple[Any, ...]) -> str:
    return str(_top_key(path)) + pytree.keystr(path[2:])


def _check_json(key: str, value: Any) -> None:
    # Frozen values are compared at every call and saved as JSON with the program.
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"{key}: cannot freeze a {type(value).__name__} argument; pass a tensor or a plain value")

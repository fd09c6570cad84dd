"""Runtime, optional: replay a whole call as one CUDA graph per input shape.

A compiled FLUX step still launches its kernels one by one from the CPU (57 block calls with
regional compilation). Where the GPU work per kernel is short (512x512) or the host CPU is slow,
the launches set the pace; a CUDA graph replays the recorded launches in one go.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, tree_map_only

log = logging.getLogger(__name__)


class CUDAGraphs:
    """`fn` replayed as a CUDA graph per input shape, captured on the shape's second call.

    The first call of a shape runs `fn` directly: it does what a capture cannot hold (loading
    programs lazily, allocating workspaces), so capturing costs no extra step. Inputs are copied
    into the graph's own buffers; outputs are cloned, so a result stays valid after the next call.
    Graphs share one memory pool and the `max_graphs` most recently used are kept. Calls with
    tensors off the GPU, and calls whose capture fails (a CPU sync inside `fn`), run `fn`
    directly. Graphs are per process: dropped on fork and when pickled.
    """

    def __init__(self, fn: Callable[..., Any], max_graphs: int = 8):
        self.fn = fn
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._called: set[tuple] = set()  # shapes that ran once
        self._uncapturable: set[tuple] = set()
        self._pool = None
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the graphs' input and output buffers are shared state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if not tensors or any(not t.is_cuda for t in tensors):
            return self.fn(*args, **kwargs)
        key = _key(leaves, spec)
        with self._lock:
            if self._pid != os.getpid():
                self._graphs, self._called, self._uncapturable = OrderedDict(), set(), set()
                self._pool, self._pid = None, os.getpid()
            graph = self._graphs.get(key)
            if graph is None and (key not in self._called or key in self._uncapturable):
                self._called.add(key)
                return self.fn(*args, **kwargs)
            if graph is None:
                try:
                    graph = self._capture(args, kwargs)
                except RuntimeError as error:
                    log.warning("CUDA graph capture failed, running without graphs for this shape: %s", error)
                    self._uncapturable.add(key)
                    return self.fn(*args, **kwargs)
                self._graphs[key] = graph
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            return graph.run(leaves)

    @property
    def shapes(self) -> int:
        """How many input shapes have a captured graph in this process."""
        return len(self._graphs)

    def _capture(self, args: tuple, kwargs: dict) -> _Graph:
        # Normal tensors, even when captured under inference mode: a later call outside it copies into them.
        with torch.inference_mode(False):
            static_args, static_kwargs = tree_map_only(torch.Tensor, torch.clone, (args, kwargs))
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        rng = torch.cuda.default_generators[torch.cuda.current_device()]
        rng_state = rng.clone_state()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.fn(*static_args, **static_kwargs)
        except RuntimeError:
            # A failed capture leaves the default generator marked as capturing: every later random op would fail.
            rng.graphsafe_set_state(rng_state)
            raise
        return _Graph(graph, (static_args, static_kwargs), out)

    def __getstate__(self) -> dict[str, Any]:
        return {"fn": self.fn, "max_graphs": self.max_graphs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["fn"], state["max_graphs"])


class _Graph:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: tuple, out: Any):
        self.graph, self.inputs, self.out = graph, tree_flatten(inputs)[0], out

    def run(self, leaves: list) -> Any:
        """Replay with the values of a call flattened like the captured one (same key)."""
        for static, value in zip(self.inputs, leaves):
            if isinstance(static, torch.Tensor):
                static.copy_(value)
        self.graph.replay()
        return tree_map_only(torch.Tensor, torch.clone, self.out)


def _key(leaves: list, spec: TreeSpec) -> tuple:
    """What a captured graph is specific to: tensor shapes, dtypes and devices, and every other value."""
    return (str(spec), *(
        (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else (type(x).__name__, repr(x)) for x in leaves
    ))

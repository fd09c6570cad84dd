"""What the app logs: its format, the library noise left out of it, and each startup stage with its time.

    startup.configure_logging()      # before the libraries are imported: some of them warn at import
    with startup.stage("load", times):
        pipe = load_pipeline(config)   # logs `startup: load 2.1 s`, and times["load"] = 2.1
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator

log = logging.getLogger("startup")
STARTED = time.perf_counter()  # the app imports this module first

# (logger, part of the message): what the libraries print whatever the caller does, and why it is harmless.
HARMLESS = [
    # torchao's optional C++ kernels (MX FP8, CUTLASS for sm90a) that need CUDA or another Python to load;
    # FP8 here is inductor's code around torch's scaled matmul, not them.
    ("torchao", "Failed to load "),
    # A CPU-only torch comes without Triton: torchao's Triton int8 matmuls, never used here, are missing.
    ("torchao.kernel.intmm", "Detected no triton"),
    # Nor for our FP8 kernels' ops (fp8_kernels/), which run their torch path there.
    ("torch._library.triton", "Triton not available, find_triton_kernels"),
    # torchao registers its enums as pytree constants at import; torch now supports them without that.
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile"),
    # Optional image processors (IP-Adapter inputs) that FLUX text-to-image never builds.
    ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision"),
    ("transformers.utils.import_utils", "`SiglipImageProcessor` requires torchvision"),
    # diffusers looks for tensor classes of older torchao to load torchao-saved checkpoints; ours are plain.
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects"),
    # Printed by every set_attention_backend call, the only API that chooses the backend.
    ("diffusers.models.modeling_utils", "Attention backends are an experimental feature"),
    # FLUX's pipeline tokenizes a long prompt untruncated only to log what it cut; the models get it truncated.
    ("transformers.tokenization_utils_base", "Token indices sequence length is longer than the specified maximum"),
    # FLUX reads CLIP's first 77 tokens by design (T5 reads the whole prompt).
    ("diffusers.pipelines.flux.pipeline_flux", "truncated because CLIP can only handle sequences up to"),
    # The T5 cut: the app logs it in one line, without quoting the user's prompt into the log.
    ("diffusers.pipelines.flux.pipeline_flux", "truncated because `max_sequence_length` is set to"),
]


def configure_logging() -> None:
    """The app's log format, at INFO, without the HARMLESS messages of its libraries."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # at INFO, every request Gradio makes to itself at launch
    for name, text in HARMLESS:
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())
    # Inductor deep-copies each graph, and with it torch's own pytree specs, while it compiles.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)


@contextlib.contextmanager
def stage(name: str, times: dict[str, float] | None = None) -> Iterator[None]:
    """Log how long the block took, as `startup: <name> 1.2 s`; with `times`, also record it there."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if times is not None:
        times[name] = seconds
    log.info("%s %.1f s", name, seconds)


def ready(stages: dict[str, float]) -> None:
    """Log the whole startup, as `startup: ready in 38.1 s (import 9.0 s, load 2.0 s, ...)`."""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
    log.info("ready in %.1f s (%s)", time.perf_counter() - STARTED, parts)

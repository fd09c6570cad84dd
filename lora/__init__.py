"""LoRAs at request time, fused into the weights the compiled programs read: no recompilation.

    masters = keep_masters(pipe.transformer)                 # before optimize_pipeline_ quantizes to FP8
    report = optimize_pipeline_(pipe, config, ...)
    library = LoraLibrary(config.lora_dir, config.lora_cache_bytes)
    fuser = LoraFuser({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}, masters,
                      config.fp8_granularity)

    lora = library.load(request_lora)                        # LoraError("lora: ...") for a bad name or file
    scale = check_scale(request_scale)                       # LoraError("lora_scale: ...")
    with fuser.applied(lora, scale):                         # inside the GPU function: fuse what changed
        image = pipe(...)

names.py says what a request may name, library.py reads and converts a file, masters.py keeps
the unquantized weights, slots.py finds the live tensors, fuser.py writes into them.
"""

from .fuser import LoraFuser
from .library import Factors, Lora, LoraLibrary, read_lora
from .masters import keep_masters
from .names import SCALE_RANGE, HubLora, LocalLora, LoraError, LoraSource, check_scale, local_names, resolve

__all__ = [
    "SCALE_RANGE", "Factors", "HubLora", "LocalLora", "Lora", "LoraError",
    "LoraFuser", "LoraLibrary", "LoraSource", "check_scale", "keep_masters", "local_names", "read_lora", "resolve",
]

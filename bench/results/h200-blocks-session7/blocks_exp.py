"""Block-level variants, FLUX.1-dev widths, FP8 per row: where does the single blocks' quantization time go?

The script that made blocks.json (session 7, call 1), kept as it ran: `OUT=dir python blocks_exp.py [variant ...]`
from the repository root. It ran with the defaults of that time: "dynamic" is the image-token axis without a
multiple and inductor's split reductions, which the project has since replaced (bench/NOTES.md, session 7).
"""
import json, os, sys, time, statistics
from pathlib import Path
import torch
sys.path.insert(0, "bench"); sys.path.insert(0, ".")
import aoti, optimization
from bench_transformer import FLUX_DEV, build, inputs, median_ms, kernel_profile, quantize_fp8_like_a_user_
from config import OptimizationConfig, MIN_SIZE, MAX_SIZE, PIXELS_PER_TOKEN, MAX_SEQUENCE_LENGTH

OUT = Path(os.environ["OUT"])
SMOKE = not torch.cuda.is_available()  # CPU: the tiny model, bf16, no FP8, just the code path
DEV, FP8 = ("cpu", False) if SMOKE else ("cuda", True)
from bench_transformer import model_config
cfg = dict(model_config("tiny", (1, 1)) if SMOKE else FLUX_DEV, num_layers=1, num_single_layers=1)
sizes = [(1024, 1024), (1344, 768), (512, 512)]
calls = {s: inputs(cfg, *s, DEV, torch.bfloat16, seed=i) for i, s in enumerate(sizes)}
SEQ4 = aoti.Dim("image_seq", (MIN_SIZE // PIXELS_PER_TOKEN) ** 2, (MAX_SIZE // PIXELS_PER_TOKEN) ** 2, multiple=4)
AXES4 = {"hidden_states": {1: SEQ4}, "image_rotary_emb": {0: SEQ4 + MAX_SEQUENCE_LENGTH}}
BASE = dict(OptimizationConfig().inductor_configs)
results = {"env": {"torch": torch.__version__, "card": torch.cuda.get_device_name() if not SMOKE else "cpu"}, "rows": []}
ref_out = {}

def block_calls(model):
    out = {}
    for name, block in (("double", model.transformer_blocks[0]), ("single", model.single_transformer_blocks[0])):
        for size, kw in calls.items():
            with aoti.capture(block) as c, torch.inference_mode():
                model(**kw)
            out[name, size] = (block, c)
    return out

def run(name, prepare):
    torch.cuda.empty_cache()
    model = build(cfg, DEV, torch.bfloat16)
    eager_calls = block_calls(model)  # eager args: the same tensors the compiled blocks get
    t0 = time.perf_counter()
    fns = prepare(model)
    compile_s = time.perf_counter() - t0
    for (kind, size), (block, c) in eager_calls.items():
        if name == "torch_compile_fp8" and size != (1024, 1024):
            continue  # one static compile (with CD) per size: only the size that matters most
        fn = (lambda f=fns[kind], c=c: f(*c.args, **c.kwargs))
        with torch.inference_mode():
            t1 = time.perf_counter()
            try:
                out = fn()
            except ValueError as e:  # a static graph: other sizes are not its
                print(f"{name} {kind} {size}: {e}"[:200]); continue
            if not SMOKE: torch.cuda.synchronize()
            first = time.perf_counter() - t1
            ms = median_ms(fn, 5, 3 if SMOKE else 40)
            prof = kernel_profile(fn, steps=3, top=10) if size == (1024, 1024) and not SMOKE else None
        flat = torch.cat([o.float().flatten() for o in (out if isinstance(out, tuple) else (out,))])
        ref = ref_out.setdefault((kind, size), flat)
        row = dict(variant=name, block=kind, size=f"{size[0]}x{size[1]}", ms=ms, compile_s=compile_s, first_call_s=first,
                   diff_vs_first_variant=((flat - ref).norm() / ref.norm()).item(), profile=prof)
        results["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        if prof:
            for k, t, n in prof["top"][:6]:
                print(f"    {t:7.3f} ms x{n:4.0f}  {k[:110]}", flush=True)
    (OUT / "blocks.json").write_text(json.dumps(results, indent=1))

def aot(dynamic=True, axes=None, **inductor):
    def prepare(model):
        old = optimization.BLOCK_AXES
        if axes is not None:
            optimization.BLOCK_AXES = axes
        try:
            config = OptimizationConfig(cache=False, dynamic=dynamic, inductor_configs={**BASE, **inductor})
            programs = optimization.compile_transformer(model, [aoti.CapturedCall((), calls[(1024, 1024)])], config, FP8)
            optimization.apply_programs_(model, programs, config, FP8)
        finally:
            optimization.BLOCK_AXES = old
        return {"double": model.transformer_blocks[0], "single": model.single_transformer_blocks[0]}
    return prepare

def tc(model):
    quantize_fp8_like_a_user_(model, "row")
    return {"double": torch.compile(model.transformer_blocks[0], fullgraph=True),
            "single": torch.compile(model.single_transformer_blocks[0], fullgraph=True)}

variants = {
    "dynamic": aot(),
    "dynamic_x4": aot(axes=AXES4),
    "static_1024": aot(dynamic=False),
    "dynamic_x4_nosplit": aot(axes=AXES4, split_reductions=False),
    "dynamic_x4_cd": aot(axes=AXES4, coordinate_descent_tuning=True),
    "dynamic_cd": aot(coordinate_descent_tuning=True),
    "torch_compile_fp8": tc,
}
for name in sys.argv[1:] or variants:
    try:
        run(name, variants[name])
    except Exception as e:
        print(f"VARIANT {name} FAILED: {e!r}"[:3000], flush=True)
        results.setdefault("failures", {})[name] = repr(e)[:2000]
    torch._dynamo.reset()
(OUT / "blocks.json").write_text(json.dumps(results, indent=1))

"""Builds small LoRAs for the embedded tiny FLUX (assets/tiny-flux), for the LoRA tests and the CPU app.

    python assets/build_loras.py            # writes assets/loras/

Made with PEFT on the real tiny model (both factors random, seeded), saved as diffusers saves
them; one is rewritten in kohya's naming so that diffusers' kohya converter reads it. Rerunning
gives byte-identical files. A few KB each; committed.

    tiny-style.safetensors                 rank 4, alpha 8 (metadata in the file), blocks and eager layers
    tiny-detail/pytorch_lora_weights.safetensors  rank 2, no metadata (alpha = rank), a folder as on the Hub
    tiny-kohya.safetensors                 kohya names (lora_unet_..., lora_down/lora_up/alpha)
    tiny-text.safetensors                  the transformer and the CLIP text encoder
"""

import argparse
import copy
import json
from pathlib import Path

import torch
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "loras"
TINY_FLUX = ROOT / "tiny-flux"

BLOCK_LAYERS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "proj_mlp"]
EAGER_LAYERS = ["x_embedder", "context_embedder", "proj_out"]  # proj_out: also each single block's
TEXT_LAYERS = ["q_proj", "v_proj", "fc1"]


def peft_factors(model: torch.nn.Module, seed: int, **config) -> tuple[dict[str, torch.Tensor], dict]:
    """PEFT's LoRA state dict for `model` (a copy) with both factors random, and its config as metadata."""
    torch.manual_seed(seed)
    lora_config = LoraConfig(init_lora_weights=False, **config)  # False: lora_B random too, not zeros
    model = inject_adapter_in_model(lora_config, copy.deepcopy(model))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.2)  # visible in the image, not overwhelming the tiny model's random weights
    state = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
    # Sets would be written in hash order: sorted, the file is the same at every run.
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in lora_config.to_dict().items()}
    return state, metadata


def kohya(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A PEFT state dict of the tiny transformer's first double and single block in kohya's names."""
    names = {
        "transformer_blocks.0.attn.to_out.0": "lora_unet_double_blocks_0_img_attn_proj",
        "transformer_blocks.0.ff.net.0.proj": "lora_unet_double_blocks_0_img_mlp_0",
        "transformer_blocks.0.ff_context.net.2": "lora_unet_double_blocks_0_txt_mlp_2",
        "transformer_blocks.0.norm1.linear": "lora_unet_double_blocks_0_img_mod_lin",
        "single_transformer_blocks.0.proj_out": "lora_unet_single_blocks_0_linear2",
    }
    out = {}
    for layer, name in names.items():
        down = state[f"{layer}.lora_A.weight"]
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = state[f"{layer}.lora_B.weight"]
        out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def sort_header(path: Path) -> None:
    """Rewrite a safetensors header with its keys sorted: safetensors writes the metadata in hash order."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + size]), separators=(",", ":"), sort_keys=True).encode()
    assert len(header) <= size  # the same entries; the rest stays padded with spaces as safetensors pads it
    path.write_bytes(data[:8] + header.ljust(size) + data[8 + size:])


def build(out: Path) -> list[Path]:
    pipe = FluxPipeline.from_pretrained(TINY_FLUX, dtype=torch.float32, local_files_only=True)
    transformer, text_encoder = pipe.transformer, pipe.text_encoder
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(folder: Path, weight_name: str, **layers) -> None:
        FluxPipeline.save_lora_weights(folder, weight_name=weight_name, safe_serialization=True, **layers)
        sort_header(folder / weight_name)
        written.append(folder / weight_name)

    style, style_meta = peft_factors(transformer, 1, r=4, lora_alpha=8, target_modules=BLOCK_LAYERS + EAGER_LAYERS)
    save(out, "tiny-style.safetensors", transformer_lora_layers=style, transformer_lora_adapter_metadata=style_meta)

    detail, _ = peft_factors(transformer, 2, r=2, lora_alpha=2, target_modules=["to_q", "to_v", "ff.net.2", "proj_mlp"])
    save(out / "tiny-detail", "pytorch_lora_weights.safetensors", transformer_lora_layers=detail)

    kohya_layers, _ = peft_factors(
        transformer, 3, r=4, lora_alpha=4,
        target_modules=["to_out.0", "ff.net.0.proj", "ff_context.net.2", "norm1.linear", "proj_out"],
    )
    save_file(kohya(kohya_layers, alpha=2.0), out / "tiny-kohya.safetensors")  # alpha 2 over rank 4: scaled by 0.5
    written.append(out / "tiny-kohya.safetensors")

    text_transformer, text_transformer_meta = peft_factors(
        transformer, 4, r=2, lora_alpha=2, target_modules=["to_q", "to_v", "proj_out"]
    )
    text, text_meta = peft_factors(text_encoder, 5, r=2, lora_alpha=4, target_modules=TEXT_LAYERS)
    save(
        out, "tiny-text.safetensors", transformer_lora_layers=text_transformer, text_encoder_lora_layers=text,
        # Both parts' metadata: with only one, diffusers builds the other's PEFT config from nothing and fails.
        transformer_lora_adapter_metadata=text_transformer_meta, text_encoder_lora_adapter_metadata=text_meta,
    )
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in build(args.out):
        print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} KB)")


if __name__ == "__main__":
    main()

"""Builds the embedded default: a tiny FluxPipeline with FLUX.1-dev's geometry, fully offline.

    python assets/build_tiny_flux.py            # writes assets/tiny-flux/
    python assets/build_tiny_flux.py --schnell --transformer num_layers=2 --out /tmp/tiny-schnell  # other shapes

Every component is a real diffusers/transformers class, saved with `save_pretrained` and loaded
by the app through the same `FluxPipeline.from_pretrained` call as the real model. Weights are
random but seeded, so the folder is reproducible; it is committed (about 1 MB).
"""

import argparse
import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

DEFAULT_OUT = Path(__file__).resolve().parent / "tiny-flux"
LATENT_CHANNELS = 16  # FLUX's VAE latent channels; 2x2 packing makes 64 transformer input channels
TEXT_DIM = 32


def clip_tokenizer() -> CLIPTokenizer:
    # Byte-level BPE with no merges: every byte is a token, so any prompt tokenizes.
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def t5_tokenizer() -> T5TokenizerFast:
    # Unigram over single characters (with and without the word-start marker).
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -1.0) for c in chars] + [(c, -2.0) for c in chars] + [("\u2581", -3.0)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


TINY_TRANSFORMER = dict(
    patch_size=1,
    in_channels=4 * LATENT_CHANNELS,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=TEXT_DIM,
    pooled_projection_dim=TEXT_DIM,
    guidance_embeds=True,  # like FLUX.1-dev: guidance is a transformer input
    axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
)


def build(
    seed: int = 0, transformer: FluxTransformer2DModel | None = None, schnell: bool = False, **shape: int
) -> FluxPipeline:
    """The tiny pipeline; with `transformer` (e.g. FLUX.1-dev's config, random weights), text encoders sized for it.

    `schnell`: FLUX.1-schnell's architecture (no guidance input) and scheduler (no resolution-dependent
    shift); `shape`: other sizes for the tiny transformer, e.g. num_layers=2.
    """
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    if transformer is None:
        transformer = FluxTransformer2DModel(**{**TINY_TRANSFORMER, "guidance_embeds": not schnell, **shape})
    t5_dim, clip_dim = transformer.config.joint_attention_dim, transformer.config.pooled_projection_dim
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # four levels: the 8x downsampling of FLUX's VAE
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        mid_block_add_attention=False,  # attention over a 2048^2 image's latents would need GBs on CPU
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=clip_dim,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=clip_dim,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=t5_dim,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            feed_forward_proj="gated-gelu",  # as in T5 v1.1, FLUX's text encoder
            is_encoder_decoder=False,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0 if schnell else 3.0, use_dynamic_shifting=not schnell, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # FLUX.1-dev's or FLUX.1-schnell's scheduler config
    pipeline = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
        text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer,
    )
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()  # modules built from configs start in train mode: dropout would break seeding
    return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--schnell", action="store_true", help="FLUX.1-schnell's architecture: no guidance input")
    parser.add_argument("--transformer", nargs="*", default=[], metavar="KEY=VALUE", help="sizes, e.g. num_layers=2")
    args = parser.parse_args()
    shape = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.transformer)}
    build(schnell=args.schnell, **shape).save_pretrained(args.out, safe_serialization=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

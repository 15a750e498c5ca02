"""Build a random-weight Stable Diffusion pipeline and save it with ``save_pretrained``.

No model hub is reachable from tests or CI, so this writes a complete pipeline directory from
scratch: UNet, VAE, a real ``CLIPTextModel`` and a ``CLIPTokenizer`` built from a small
vocab.json/merges.txt written here, a scheduler and ``model_index.json``. The server loads the
result with ``from_pretrained`` exactly like a downloaded model.

Presets:
  tiny  a few hundred thousand parameters; CPU tests and the CPU benchmark.
  sd15  SD1.5-shaped (859.5M-parameter UNet, full VAE, 12-layer CLIP text encoder), random
        weights, the same FLOPs as the real model; GPU benchmarks.

    python -m diffusion_sampler.build_model --preset tiny --out /tmp/tiny-sd
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

WORDS = [
    "a", "photo", "of", "the", "an", "and", "with", "in", "on", "at", "cat", "dog", "astronaut", "horse",
    "riding", "red", "blue", "green", "painting", "portrait", "landscape", "city", "night", "sky", "sun",
    "moon", "tree", "house", "car", "bird", "flower", "mountain", "river", "sea", "beautiful", "small", "big",
    "old", "new", "cinematic", "lighting", "detailed", "style", "oil", "watercolor",
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_tokenizer_files(directory: Path) -> int:
    """Write a small but real CLIP BPE vocabulary; returns its size."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            left, right = symbols[0], symbols[1]
            merged = left + right
            if f"{left} {right}" not in merges:
                merges.append(f"{left} {right}")
            vocab.setdefault(merged, len(vocab))
            symbols = [merged] + symbols[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }))
    return len(vocab)


def build(out: Path, preset: str = "tiny", seed: int = 0, dtype: str = "fp32") -> Path:
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if preset == "tiny":
        text_config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                     projection_dim=32, **ids)
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)
        vae = AutoencoderKL(
            block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
            norm_num_groups=8, sample_size=64)
    elif preset == "sd15":
        # CLIP ViT-L/14 text tower shape; the embedding table keeps the real 49408 rows even
        # though the tokenizer here uses only a few hundred of them.
        text_config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                     projection_dim=768, hidden_act="quick_gelu", **ids)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)
    else:
        raise ValueError(f"unknown preset {preset!r}")
    text_encoder = CLIPTextModel(text_config)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # The ignores below: for type checkers, diffusers' top-level names resolve to the placeholder
    # classes in diffusers.utils.dummy_torch_and_transformers_objects, which lack DiffusionPipeline's
    # methods; the real class (imported at runtime) has them.
    if dtype == "fp16":
        pipe = pipe.to(torch_dtype=torch.float16)  # type: ignore[attr-defined]
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)  # type: ignore[attr-defined]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="directory to write the pipeline into")
    parser.add_argument("--preset", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default=None,
                        help="weights on disk (default: fp32 for tiny, fp16 for sd15)")
    args = parser.parse_args(argv)
    dtype = args.dtype or ("fp16" if args.preset == "sd15" else "fp32")
    print(build(args.out, args.preset, args.seed, dtype))


if __name__ == "__main__":
    main()

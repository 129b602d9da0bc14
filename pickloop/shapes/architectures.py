"""The tiny models of the embedded default: same classes as Stable Diffusion 1.x, only small.

Shapes: images 3x64x64 in [-1, 1]; latents 4x16x16 (VAE factor 4); text states
(batch, MAX_TOKENS, TEXT_WIDTH).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .world import vocabulary

MAX_TOKENS = 24  # tokens per caption, padded; the longest caption needs 17
TEXT_WIDTH = 128  # hidden size of the diffusion text encoder
SPECIAL = ("<|startoftext|>", "<|endoftext|>")
# One schedule for training and sampling: SD's betas rescaled to zero terminal SNR,
# predicting v (Lin et al. 2023); with epsilon on SD's schedule the background came out wrong.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", rescale_betas_zero_snr=True)


def learn_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair merges that turn every caption word into one token (CLIP's "</w>" convention).

    Merges are learned the usual way (most frequent pair first), so that applying them by
    rank, as CLIP's tokenizer does, rebuilds each word exactly. Returns (vocab, merges).
    """
    spelled = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    symbols = {s for parts in spelled.values() for s in parts}
    symbols |= {c for w in words for c in w} | {c + "</w>" for w in words for c in w}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for parts in spelled.values() for p in zip(parts, parts[1:]))
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        for w, parts in spelled.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            spelled[w] = tuple(out)
        symbols |= {best[0] + best[1]}
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL) + sorted(symbols))}
    return vocab, merges


def make_tokenizer() -> CLIPTokenizer:
    """A word-level CLIPTokenizer for the shapes captions, built offline."""
    vocab, merges = learn_bpe(vocabulary())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def make_vae() -> AutoencoderKL:
    """A small AutoencoderKL (8 channels at full resolution, where most of the time goes), factor 4:
    3x64x64 image <-> 4x16x16 latent."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 32), norm_num_groups=8, mid_block_add_attention=False,
    )


def make_unet() -> UNet2DConditionModel:
    """A small UNet2DConditionModel on 4x16x16 latents; cross-attention at 8x8 and 4x4 only

    (attention over 256 tokens at 16x16 cost twice the time for little gain here).
    """
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=8,
    )


def make_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModel:
    """A 2-layer CLIPTextModel; kept frozen at its random init, which the U-Net used more

    than a jointly trained one in an earlier trial.
    """
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=TEXT_WIDTH,
    )
    return CLIPTextModel(config).eval().requires_grad_(False)


def make_clip(tokenizer: CLIPTokenizer) -> CLIPModel:
    """A small CLIPModel (ViT on 8x8 patches of 64x64 images, 3-layer text tower), ~1.3M params."""
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=64, patch_size=8, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                  num_attention_heads=4, num_channels=3)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128))


def make_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, clip_sample=False)


def make_sample_scheduler() -> DDIMScheduler:
    """DDIM with trailing spacing, so the first step starts from pure noise (t = 999)."""
    # steps_offset is unused by trailing spacing
    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing",
                         steps_offset=1)


def encode_captions(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str],
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Captions -> text states (batch, MAX_TOKENS, TEXT_WIDTH), padded as the pipeline pads."""
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return text_encoder(ids)[0]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20

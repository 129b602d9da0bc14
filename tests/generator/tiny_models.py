"""Tiny randomly initialised Stable Diffusion 1.x and SDXL pipelines, built from configs and saved to a folder.

Same classes as the real models (UNet2DConditionModel, AutoencoderKL, CLIPTextModel[WithProjection],
CLIPTokenizer, DDIMScheduler), only a few thousand parameters, so a 16-pixel image takes milliseconds.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

MAX_TOKENS = 16


def tiny_tokenizer():
    """A character-level CLIPTokenizer (no merges): every lowercase word spells out letter by letter."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ",.'-!?"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _text_config(tok, **kw):
    from transformers import CLIPTextConfig

    values = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return CLIPTextConfig(**{**values, **kw})


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=16)


def build_tiny_sd(folder: Path, seed: int = 0, cross_attention_dim: int = 32) -> Path:
    """Save a tiny StableDiffusionPipeline (16x16 images, 8x8 latents) to ``folder``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8)
    text_encoder = CLIPTextModel(_text_config(tok, hidden_size=cross_attention_dim))
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=text_encoder, tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Save a tiny StableDiffusionXLPipeline (two text encoders, text_time embedding; 16x16 images)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled 32-d text embedding
        cross_attention_dim=64, norm_num_groups=8)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok)), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, projection_dim=32)), tokenizer_2=tok,
        unet=unet, scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                    beta_end=0.012, timestep_spacing="leading", steps_offset=1))
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def write_defaults(folder: Path, **values) -> None:
    """The sampling defaults a model folder may carry (as the shapes model does)."""
    (Path(folder) / "pickloop_defaults.json").write_text(json.dumps(values))


def make_lora(base_folder: Path, out: Path, seed: int = 1, rank: int = 4) -> Path:
    """A random (non-zero) U-Net LoRA for the pipeline in ``base_folder``, saved in diffusers format."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet", use_safetensors=True)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # lora_B starts at zero, which would make a LoRA that changes nothing
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    return Path(out)

"""The preference reward model r(prompt, image): a CLIP backbone and a small head on its features.

The head reads the L2-normalised CLIP image and text embeddings (each of size d) as
[img, txt, img * txt] (3d values) and returns one score per (prompt, image). As in PickScore
(Kirstain et al. 2023), scores are only comparable between images of the same prompt: the
probability that a is preferred over b is softmax([r_a, r_b])[0] = sigmoid(r_a - r_b).

The backbone is frozen by default, so image and text features are cached (images by a hash of
their pixels or the caller's key, e.g. the store's sha256) and training touches only the head.
With ``lora_rank > 0`` peft LoRA adapters are put on the backbone's attention projections.

Saved layout (a folder, written to a temp folder and renamed into place):
``model.safetensors`` (head.* and backbone_lora.* tensors), ``config.json``, ``metrics.json``.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from pickloop.atomic import fsync_file, replacing_folder
from pickloop.errors import UserError
from pickloop.integrity import file_sha256, parse_safetensors, read_verified

FORMAT = "pickloop-reward/1"
WEIGHTS_FILE = "model.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP attention projections
MAX_CACHED = 100_000  # cached image features kept before the cache is emptied (DDPO scores new images forever)


@dataclass
class RewardModelConfig:
    """What a saved reward model needs to be rebuilt (written to config.json)."""

    backbone: str = "embedded:shapes-clip"  # CLIPModel folder, hub id or embedded:shapes-clip
    head_width: int = 64  # hidden units of the head's MLP (0 = linear head only)
    dropout: float = 0.1  # dropout in the head while training
    lora_rank: int = 0  # 0 = frozen backbone; >0 = LoRA adapters of this rank on the backbone
    lora_alpha: float = 0.0  # LoRA scale numerator; 0 means alpha = rank
    patch_features: bool = True  # also read the mean and std of the vision tower's patch tokens
    feature_dim: int = 0  # CLIP projection size, filled from the backbone
    backbone_sha256: str = ""  # of the backbone's weights file when local, to catch a changed backbone
    seed: int = 0  # seed of the head's initialisation

    def __post_init__(self) -> None:
        if self.head_width < 0:
            raise UserError(f"head width must be >= 0, not {self.head_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.lora_rank < 0:
            raise UserError(f"LoRA rank must be >= 0, not {self.lora_rank}")


COS_SCALE = 10.0  # CLIP cosine similarity (-1..1) times this enters the head's linear part


class PreferenceHead(nn.Module):
    """r(prompt, image) from CLIP features: a linear part plus an optional MLP for interactions.

    Inputs: img (n, d + extra) = the projected CLIP image embedding (d) followed, when ``extra`` > 0,
    by the mean of the vision tower's patch tokens (extra); txt (n, d) = the projected text embedding.
    Linear part: on [img_n, patches, COS_SCALE * cos(img, txt)] (img_n normalised, patches
    layer-normalised). MLP (``width`` > 0): on [img_n, txt_n, img_n * txt_n, patches], its output layer
    zero-initialised so training starts from the linear model; with few labels the linear part is what
    generalises to new prompts, the MLP can learn prompt-dependent tastes as labels grow.
    Terms of the text alone cancel in r_a - r_b, so only image and image-text terms matter.
    """

    def __init__(self, dim: int, width: int, dropout: float = 0.0, extra: int = 0):
        super().__init__()
        self.dim, self.extra = dim, extra
        self.linear = nn.Linear(dim + extra + 1, 1)
        self.mlp = None
        if width > 0:
            self.mlp = nn.Sequential(nn.Linear(3 * dim + extra, width), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(width, 1))
            nn.init.zeros_(self.mlp[-1].weight)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        # Unit vectors have entries of size ~1/sqrt(d); rescale so the layers see values of order 1.
        s = math.sqrt(self.dim)
        emb, patches = img[..., :self.dim], img[..., self.dim:]
        emb, txt = nn.functional.normalize(emb, dim=-1), nn.functional.normalize(txt, dim=-1)
        cos = (emb * txt).sum(-1, keepdim=True) * COS_SCALE
        patches = nn.functional.layer_norm(patches, (self.extra,)) if self.extra else patches
        r = self.linear(torch.cat([emb * s, patches, cos], dim=-1))
        if self.mlp is not None:
            r = r + self.mlp(torch.cat([emb * s, txt * s, emb * txt * self.dim, patches], dim=-1))
        return r.squeeze(-1)


def image_key(image: Image.Image) -> str:
    """A cache key for an image: sha256 of its RGB pixels and size (not of any file encoding)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _weights_sha256(folder: str) -> str:
    path = Path(folder) / "model.safetensors"
    return file_sha256(path) if path.is_file() else ""


def load_backbone(ref: str):  # noqa: ANN201 - (CLIPModel, tokenizer, image processor, resolved folder)
    """The CLIPModel of ``ref`` with the tokenizer and image processor saved beside it."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from pickloop.context import resolve_model_ref

    folder = resolve_model_ref(ref)
    if ref.startswith("embedded:") and not Path(folder).is_dir():
        raise UserError(f"the embedded CLIP is not installed at {folder}; pass a CLIP folder as backbone")
    try:
        # safetensors only: a backbone published only as a pickle (pytorch_model.bin) is refused, never unpickled
        clip = CLIPModel.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load CLIP backbone {ref!r} (safetensors weights only): "
                        f"{str(e).splitlines()[0]}") from None
    try:
        proc = CLIPProcessor.from_pretrained(folder)
        tokenizer, image_processor = proc.tokenizer, proc.image_processor
    except (OSError, ValueError, TypeError):
        # A bare CLIPModel folder: its tokenizer alone, images resized to the vision tower's input.
        try:
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise UserError(f"no tokenizer saved with CLIP backbone {ref!r}: {str(e).splitlines()[0]}") from None
        n = clip.config.vision_config.image_size
        image_processor = CLIPImageProcessor(size={"shortest_edge": n}, crop_size={"height": n, "width": n})
    return clip.eval(), tokenizer, image_processor, folder


class RewardModel(nn.Module):
    """r(prompt, image) = head(CLIP image features, CLIP text features)."""

    def __init__(self, config: RewardModelConfig, backbone, tokenizer, image_processor):  # noqa: ANN001
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_tokens = int(backbone.config.text_config.max_position_embeddings)
        config.feature_dim = int(backbone.config.projection_dim)
        torch.manual_seed(config.seed)
        extra = 2 * int(backbone.config.vision_config.hidden_size) if config.patch_features else 0
        self.head = PreferenceHead(config.feature_dim, config.head_width, config.dropout, extra)
        self.backbone.requires_grad_(False)
        if config.lora_rank > 0:
            self._add_lora()
        self._image_cache: dict[str, torch.Tensor] = {}
        self._text_cache: dict[str, torch.Tensor] = {}
        self.metrics: dict = {}
        self.eval()

    # ------------------------------------------------------------ construction

    @classmethod
    def create(cls, backbone: str = "embedded:shapes-clip", **config) -> "RewardModel":  # noqa: ANN003
        """A fresh model (untrained head) on ``backbone``; ``config`` as in RewardModelConfig."""
        clip, tokenizer, image_processor, folder = load_backbone(backbone)
        cfg = RewardModelConfig(backbone=backbone, backbone_sha256=_weights_sha256(folder), **config)
        return cls(cfg, clip, tokenizer, image_processor)

    def _add_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        r = self.config.lora_rank
        lora = LoraConfig(r=r, lora_alpha=self.config.lora_alpha or r, target_modules=list(LORA_TARGETS))
        inject_adapter_in_model(lora, self.backbone)  # only lora_* parameters are trainable

    def fresh_head(self, seed: int = 0, **head) -> "RewardModel":  # noqa: ANN003
        """A model with a new, untrained head on this model's backbone (shared and frozen, LoRA
        adapters included as they are): for learning curves and untrained baselines. ``head``
        overrides head settings (head_width, dropout)."""
        cfg = RewardModelConfig(**{**asdict(self.config), **head, "lora_rank": 0, "seed": seed})
        other = RewardModel(cfg, self.backbone, self.tokenizer, self.image_processor)
        other._image_cache, other._text_cache = self._image_cache, self._text_cache
        return other

    @property
    def backbone_trainable(self) -> bool:
        return self.config.lora_rank > 0

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.backbone.state_dict().items() if "lora_" in k}

    # ------------------------------------------------------------ features

    def _embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, d) projected CLIP image embeddings, then (n, 2h) mean and std of the patch tokens."""
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        out = self.backbone.vision_model(pixel_values=pixels["pixel_values"])
        emb = self.backbone.visual_projection(out.pooler_output)
        if not self.config.patch_features:
            return emb
        tokens = self.backbone.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
        # Mean and spread over patches: how much of the image an object covers, not only what it is.
        return torch.cat([emb, tokens.mean(dim=1), tokens.std(dim=1)], dim=-1)

    def _embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_tokens, truncation=True,
                             return_tensors="pt")
        out = self.backbone.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        return getattr(out, "pooler_output", out)

    def image_features(self, images: Sequence[Image.Image], keys: Sequence[str] | None = None,
                       batch_size: int = 64) -> torch.Tensor:
        """CLIP image embeddings (n, d). Cached by ``keys`` (or a pixel hash) when the backbone is frozen;
        with LoRA they carry gradients and are never cached."""
        if self.backbone_trainable:
            return torch.cat([self._embed_images(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        keys = list(keys) if keys is not None else [image_key(im) for im in images]
        if len(self._image_cache) + len(keys) > MAX_CACHED:
            self._image_cache.clear()
        todo = {k: im for k, im in zip(keys, images) if k not in self._image_cache}
        items = list(todo.items())
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                chunk = items[i:i + batch_size]
                for (k, _), f in zip(chunk, self._embed_images([im for _, im in chunk])):
                    self._image_cache[k] = f
        return torch.stack([self._image_cache[k] for k in keys])

    def text_features(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """CLIP text embeddings (n, d), cached per prompt text when the backbone is frozen."""
        if self.backbone_trainable:
            return torch.cat([self._embed_texts(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)])
        todo = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        with torch.no_grad():
            for i in range(0, len(todo), batch_size):
                for p, f in zip(todo[i:i + batch_size], self._embed_texts(todo[i:i + batch_size])):
                    self._text_cache[p] = f
        return torch.stack([self._text_cache[p] for p in prompts])

    def clear_cache(self) -> None:
        self._image_cache.clear()
        self._text_cache.clear()

    # ------------------------------------------------------------ scoring

    def score_features(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Scores (n,) from image and text features (n, d) each; differentiable."""
        return self.head(img, txt)

    def forward(self, prompts: Sequence[str], images: Sequence[Image.Image],
                keys: Sequence[str] | None = None) -> torch.Tensor:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        return self.score_features(self.image_features(images, keys), self.text_features(list(prompts)))

    @torch.no_grad()
    def score(self, prompts: Sequence[str] | str, images: Sequence[Image.Image],
              keys: Sequence[str] | None = None) -> torch.Tensor:
        """r(prompt, image) for each pair, shape (n,), float32, in eval mode. A single prompt string
        applies to every image. Compare scores only between images of the same prompt."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        was_training = self.training
        self.eval()
        try:
            return self.forward(list(prompts), list(images), keys).float()
        finally:
            self.train(was_training)

    # ------------------------------------------------------------ persistence

    def state_to_save(self) -> dict[str, torch.Tensor]:
        out = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        out.update({f"backbone_lora.{k}": v for k, v in self.lora_state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def save(self, path: str | Path, metrics: dict | None = None) -> Path:
        """Write the folder ``path`` atomically (``pickloop.atomic.replacing_folder``). Returns ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        if metrics is not None:
            self.metrics = dict(metrics)
        with replacing_folder(path) as tmp:
            save_file(self.state_to_save(), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
            (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **asdict(self.config)}, indent=2) + "\n")
            (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True) + "\n")
            for f in tmp.iterdir():
                fsync_file(f)
        return path

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> "RewardModel":
        """A saved model; one clear UserError when the folder is missing or not a reward model, or when its
        weights do not match ``expected_sha256`` (what the registry recorded) or hold non-finite values."""
        path = Path(path)
        try:
            raw = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"not a saved reward model: {path} ({type(e).__name__})") from None
        if not isinstance(raw, dict):
            raise UserError(f"not a saved reward model: {path} (config.json is not an object)")
        data = read_verified(path / WEIGHTS_FILE, expected_sha256, what="reward model file",
                             source="the reward-model registry")
        tensors, _ = parse_safetensors(data, path / WEIGHTS_FILE, what="reward model file")
        if raw.get("format") != FORMAT:
            raise UserError(f"not a saved reward model: {path} (format {raw.get('format')!r})")
        cfg = RewardModelConfig(**{f.name: raw[f.name] for f in fields(RewardModelConfig) if f.name in raw})
        clip, tokenizer, image_processor, folder = load_backbone(cfg.backbone)
        found = _weights_sha256(folder)
        if cfg.backbone_sha256 and found and found != cfg.backbone_sha256:
            warnings.warn(f"reward model {path} was trained on another version of {cfg.backbone}; retrain it",
                          stacklevel=2)
        model = cls(cfg, clip, tokenizer, image_processor)
        model.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        lora = {k[len("backbone_lora."):]: v for k, v in tensors.items() if k.startswith("backbone_lora.")}
        if lora:
            missing = set(lora) - set(model.lora_state_dict())
            if missing:
                raise UserError(f"reward model {path} has LoRA weights the backbone cannot take: {sorted(missing)[:3]}")
            model.backbone.load_state_dict(lora, strict=False)
        metrics_file = path / "metrics.json"
        model.metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        return model.eval()

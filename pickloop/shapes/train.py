"""The recipe that trains the embedded default: a VAE, a CLIP, then a U-Net, each time-boxed.

Every stage keeps one checkpoint file in the work dir (a safetensors file whose
metadata holds the step, elapsed seconds and optimizer settings), replaced atomically,
so a killed run resumes where it stopped. Images are 3x64x64 in [-1, 1].
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from tqdm import tqdm
from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTextModel, CLIPTokenizer

from pickloop.errors import DamagedFileError
from pickloop.integrity import parse_safetensors, read_verified, tensors_sha256

from . import architectures as A
from .config import StageConfig, UnetConfig
from .world import Scene, caption, is_heldout, random_open, render, sample_scene


# ---------------------------------------------------------------- data


def image_to_tensor(images: Iterable[Image.Image]) -> torch.Tensor:
    """PIL images -> float tensor (n, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def training_scenes(rng: random.Random, n: int, two_share: float = 0.25) -> list:
    return [sample_scene(rng, two_share) for _ in range(n)]


def training_caption(rng: random.Random, scene: Scene, open_share: float) -> str:
    """A caption of the scene that is not a held-out prompt (re-draws the open attributes)."""
    for _ in range(20):
        text = caption(scene, random_open(rng, scene, open_share))
        if not is_heldout(text):
            return text
    return caption(scene, ("background", "size"))  # a rare scene whose every wording is held out


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors + JSON metadata to one safetensors file, atomically (tmp, fsync, replace). The header
    carries the sha256 of the tensors and metadata (``pickloop.integrity.tensors_sha256``), checked on load."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    text = json.dumps(meta)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"meta": text, "sha256": tensors_sha256(tensors, text)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, metadata) of a checkpoint written by :func:`save_checkpoint`, read once and checked
    against the sha256 in its header; None when there is none. One UserError line when it is damaged."""
    if not path.exists():
        return None
    tensors, header = parse_safetensors(read_verified(path, None), path, what="checkpoint file")
    try:
        meta = json.loads(header.get("meta", "{}"))  # the text encoder's file carries none
    except ValueError:
        raise DamagedFileError(f"checkpoint file {path} has no readable metadata (corrupted)") from None
    if "sha256" in header and tensors_sha256(tensors, header["meta"]) != header["sha256"]:
        raise DamagedFileError(f"checkpoint file {path} is corrupted: its contents do not match the sha256 "
                               "recorded in its header; delete it to start that stage again")
    return tensors, meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten AdamW state into named tensors ("opt.<param index>.<name>")."""
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"opt.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- one time-boxed loop


class Budget:
    """Wall-clock budget with a tqdm bar in seconds; carries time spent before a resume."""

    def __init__(self, name: str, minutes: float, spent_s: float):
        # monotonic: a wall clock that jumps (NTP, a suspended VM) must not eat the budget
        self.total, self.spent, self.start = minutes * 60, spent_s, time.monotonic() - spent_s
        self.bar = tqdm(total=int(self.total), initial=int(spent_s), desc=name, unit="s", mininterval=5)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def tick(self, **postfix: Any) -> bool:
        """Advance the bar; False once the budget is spent."""
        now = int(self.elapsed())
        if now > self.bar.n:
            self.bar.update(min(now, int(self.total)) - self.bar.n)
            self.bar.set_postfix(**postfix, refresh=False)
        return self.elapsed() < self.total

    def close(self) -> None:
        self.bar.close()


def lr_at(step: int, cfg: StageConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


@dataclass
class ExtraState:
    """State beyond the model and optimizer (the EMA weights), saved with each checkpoint."""

    get: Callable[[], dict[str, torch.Tensor]]  # named tensors to save
    set: Callable[[dict[str, torch.Tensor]], None]  # restore them on resume
    after_step: Callable[[int], None]  # called with the new step count after each update


def run_stage(name: str, model: torch.nn.Module, params: list, loss_fn: Callable[[int, random.Random], torch.Tensor],
              cfg: StageConfig, work: Path,
              extra_state: ExtraState | None = None) -> int:
    """Train `params` with `loss_fn(step, rng) -> loss` until the budget is spent; resumable.

    Returns the number of steps done in total.
    """
    ckpt_path = work / f"{name}.ckpt.safetensors"
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    step, spent = 0, 0.0
    found = load_checkpoint(ckpt_path)
    if found:
        tensors, meta = found
        model.load_state_dict(prefixed("model.", tensors))
        restore_optimizer(opt, tensors)
        if extra_state:
            extra_state.set(prefixed("extra.", tensors))
        step, spent = meta["step"], meta["elapsed_s"]
    rng = random.Random(f"{cfg.seed}-{name}-{step}")  # a resumed stream continues with fresh data
    budget = Budget(name, cfg.minutes, spent)
    last_save, losses = time.monotonic(), []
    model.train()
    while budget.tick(step=step, loss=f"{np.mean(losses[-50:]) if losses else 0:.4f}"):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = loss_fn(step, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if extra_state:
            extra_state.after_step(step)
        if time.monotonic() - last_save > cfg.checkpoint_every_s:
            _save_stage(ckpt_path, model, opt, extra_state, step, budget.elapsed(), losses, cfg)
            last_save = time.monotonic()
    if losses:  # a stage whose budget was already spent keeps its checkpoint (and its figures)
        _save_stage(ckpt_path, model, opt, extra_state, step, budget.elapsed(), losses, cfg)
    budget.close()
    model.eval()
    return step


def _save_stage(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, extra_state: ExtraState | None,
                step: int, elapsed: float, losses: list[float], cfg: StageConfig) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors(opt))
    if extra_state:
        tensors.update({f"extra.{k}": v for k, v in extra_state.get().items()})
    meta = {"step": step, "elapsed_s": elapsed, "loss": float(np.mean(losses[-100:])) if losses else None,
            "config": asdict(cfg)}
    save_checkpoint(path, tensors, meta)
    print(f"[{path.name}] step {step} elapsed {elapsed:.0f}s loss {meta['loss']}", flush=True)


def stage_meta(work: Path, name: str) -> dict:
    found = load_checkpoint(Path(work) / f"{name}.ckpt.safetensors")
    return found[1] if found else {}


# ---------------------------------------------------------------- the three stages


def train_vae(work: Path, cfg: StageConfig, device: str = "cpu") -> None:
    """Train the AutoencoderKL on rendered scenes; then fix its latent scaling factor."""
    vae = A.make_vae().to(device)

    def loss_fn(step: int, rng: random.Random) -> torch.Tensor:
        x = image_to_tensor([render(s) for s in training_scenes(rng, cfg.batch_size)]).to(device)
        posterior = vae.encode(x).latent_dist
        # Decode the posterior mean: sampling at the initial unit variance drowns the small
        # early latents in noise and stalled training for hundreds of steps. A little noise
        # relative to the latents' own scale keeps the decoder tolerant of U-Net error.
        z = posterior.mean
        z = z + 0.05 * z.detach().std() * torch.randn_like(z)
        recon = vae.decode(z).sample
        # L1 keeps flat colours and sharp corners; a tiny KL keeps the latent scale in check.
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()

    run_stage("vae", vae, list(vae.parameters()), loss_fn, cfg, work)


def load_vae(work: Path, device: str = "cpu") -> AutoencoderKL:
    """The trained VAE with scaling_factor set so that scaled latents have unit std."""
    tensors, meta = load_checkpoint(work / "vae.ckpt.safetensors")
    vae = A.make_vae()
    vae.load_state_dict(prefixed("model.", tensors))
    vae.eval().requires_grad_(False).to(device)
    rng = random.Random("scale")
    with torch.no_grad():
        x = image_to_tensor([render(s) for s in training_scenes(rng, 256)]).to(device)
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def text_encoder_for(work: Path, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """The frozen random text encoder, saved once so the U-Net always sees the same one."""
    path = work / "text_encoder.safetensors"
    te = A.make_text_encoder(tokenizer)
    if path.exists():
        te.load_state_dict(load_checkpoint(path)[0])
    else:
        save_checkpoint(path, te.state_dict(), {})
    return te


def encode_pool(vae: AutoencoderKL, scenes: list, device: str, batch: int = 128) -> torch.Tensor:
    """Scaled latent means (n, 4, 16, 16) of the rendered scenes."""
    out = []
    with torch.no_grad():
        for i in range(0, len(scenes), batch):
            x = image_to_tensor([render(s) for s in scenes[i:i + batch]]).to(device)
            out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def train_unet(work: Path, cfg: UnetConfig, device: str = "cpu") -> None:
    """Train the U-Net to predict v on zero-terminal-SNR noise, with caption dropout and EMA."""
    tokenizer = A.make_tokenizer()
    te = text_encoder_for(work, tokenizer).to(device)
    vae = load_vae(work, device)
    scenes = training_scenes(random.Random(f"pool-{cfg.seed}"), cfg.pool_size)
    print(f"encoding {len(scenes)} scenes to latents", flush=True)
    latents = encode_pool(vae, scenes, device)
    torch.manual_seed(cfg.seed)
    unet = A.make_unet().to(device)
    ema = [p.detach().clone() for p in unet.parameters()]
    names = [n for n, _ in unet.named_parameters()]
    sched = A.make_train_scheduler()

    def loss_fn(step: int, rng: random.Random) -> torch.Tensor:
        idx = [rng.randrange(len(scenes)) for _ in range(cfg.batch_size)]
        texts = ["" if rng.random() < cfg.cfg_dropout else training_caption(rng, scenes[i], cfg.open_share)
                 for i in idx]
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), device=device)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, A.encode_captions(tokenizer, te, texts, device)).sample
        return F.mse_loss(pred, target)

    def update_ema(step: int) -> None:
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters()):
                e.lerp_(p.detach(), 1 - decay)

    def get_ema() -> dict:
        return {f"ema.{n}": e for n, e in zip(names, ema)}

    def set_ema(tensors: dict) -> None:
        for n, e in zip(names, ema):
            e.copy_(tensors[f"ema.{n}"])

    run_stage("unet", unet, list(unet.parameters()), loss_fn, cfg, work, ExtraState(get_ema, set_ema, update_ema))


def load_unet_ema(work: Path) -> tuple[UNet2DConditionModel, dict]:
    tensors, meta = load_checkpoint(work / "unet.ckpt.safetensors")
    unet = A.make_unet()
    ema = prefixed("extra.ema.", tensors)
    state = unet.state_dict()
    state.update({k: v for k, v in ema.items()})
    unet.load_state_dict(state)
    return unet.eval(), meta


def train_clip(work: Path, cfg: StageConfig, device: str = "cpu", open_share: float = 0.2) -> None:
    """Contrastive CLIP training on rendered scenes, lightly noised so generated images read too."""
    tokenizer = A.make_tokenizer()
    torch.manual_seed(cfg.seed)
    clip = A.make_clip(tokenizer).to(device)

    def loss_fn(step: int, rng: random.Random) -> torch.Tensor:
        scenes = training_scenes(rng, cfg.batch_size)
        x = image_to_tensor([render(s) for s in scenes]).to(device)
        x = x + 0.06 * torch.randn_like(x)  # generated images are slightly noisy and soft
        ids = tokenizer([training_caption(rng, s, open_share) for s in scenes], padding="max_length",
                        max_length=A.MAX_TOKENS, truncation=True, return_tensors="pt").input_ids.to(device)
        return clip(input_ids=ids, pixel_values=x, return_loss=True).loss

    run_stage("clip", clip, list(clip.parameters()), loss_fn, cfg, work)


# ---------------------------------------------------------------- inference artifacts


def replace_folder(tmp: Path, target: Path) -> None:
    """Swap a fully written folder into place so readers never see a half-written one."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def build_pipeline(work: Path, out: Path, num_inference_steps: int = 10, guidance_scale: float = 4.0,
                   card: str = "") -> Path:
    """Assemble a StableDiffusionPipeline from the checkpoints and save it (safetensors) to `out`.

    Also writes pickloop_defaults.json (sampling settings the generator reads) and README.md.
    """
    work, out = Path(work), Path(out)
    tokenizer = A.make_tokenizer()
    unet, meta = load_unet_ema(work)
    pipe = StableDiffusionPipeline(
        vae=load_vae(work), text_encoder=text_encoder_for(work, tokenizer), tokenizer=tokenizer, unet=unet,
        scheduler=A.make_sample_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    defaults = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                "height": 64, "width": 64, "unet_steps": meta["step"], "unet_minutes": meta["elapsed_s"] / 60}
    (tmp / "pickloop_defaults.json").write_text(json.dumps(defaults, indent=2) + "\n")
    (tmp / "README.md").write_text(card or "# pickloop shapes pipeline\n")
    replace_folder(tmp, out)
    return out


def save_clip(work: Path, out: Path, card: str = "") -> Path:
    """Save the trained CLIPModel with a CLIPProcessor (64x64, mean/std 0.5) to `out`."""
    work, out = Path(work), Path(out)
    tokenizer = A.make_tokenizer()
    clip = A.make_clip(tokenizer)
    tensors, _ = load_checkpoint(work / "clip.ckpt.safetensors")
    clip.load_state_dict(prefixed("model.", tensors))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True),
        tokenizer=tokenizer,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clip.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    (tmp / "README.md").write_text(card or "# pickloop shapes CLIP\n")
    replace_folder(tmp, out)
    return out

"""Draw N candidates for a prompt in one batched pipeline call, each from its own recorded seed.

Every image carries a ``params`` dict with everything that shapes it (prompt, the whole batch's seeds,
scheduler class and config, steps, guidance, size, negative prompt, model version, LoRA and its scale,
dtype, device, thread count, library versions), so :func:`redraw` can make it again bit for bit from a
stored candidate row alone. The batch's seeds are recorded because a batch of 4 and a batch of 1 need not
round the same way in floating point: a redraw replays the whole batch and keeps its slot.
"""
from __future__ import annotations

import json
import random
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from pickloop.errors import UserError

FALLBACK_STEPS = 30  # Stable Diffusion's usual DDIM/DPM step count when the model folder names none
FALLBACK_GUIDANCE = 7.5
SEED_LIMIT = 2**31  # seeds in [0, 2^31): portable as a JSON number and a database integer


def fresh_seeds(n: int, rng: random.Random | None = None) -> list[int]:
    rng = rng or random.SystemRandom()
    return [rng.randrange(SEED_LIMIT) for _ in range(n)]


def default_size(pipe) -> tuple[int, int]:  # noqa: ANN001
    """(height, width) in pixels the pipeline draws by default: U-Net sample size x VAE scale factor."""
    unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(unet.config, "sample_size", 64) if unet is not None else 64
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    size = int(sample) * int(getattr(pipe, "vae_scale_factor", 8))
    return size, size


def resolve_defaults(pipe, *, steps=None, guidance=None, height=None, width=None) -> dict[str, Any]:  # noqa: ANN001
    """Sampling settings: the arguments given, else the model folder's pickloop_defaults.json, else SD's."""
    d = getattr(getattr(pipe, "pickloop_info", None), "defaults", {}) or {}
    h0, w0 = default_size(pipe)
    out = dict(num_inference_steps=int(steps if steps is not None else d.get("num_inference_steps", FALLBACK_STEPS)),
               guidance_scale=float(guidance if guidance is not None else d.get("guidance_scale", FALLBACK_GUIDANCE)),
               height=int(height if height is not None else d.get("height", h0)),
               width=int(width if width is not None else d.get("width", w0)))
    if out["num_inference_steps"] < 1:
        raise UserError("steps must be at least 1")
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    if out["height"] % scale or out["width"] % scale:
        raise UserError(f"height and width must be multiples of {scale} for this model")
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def make_scheduler(pipe, scheduler: Any = None):  # noqa: ANN001, ANN201
    """The scheduler to sample with: the pipeline's own, a diffusers class name on its config, or an instance."""
    import diffusers

    if scheduler is None:
        return pipe.scheduler
    if isinstance(scheduler, str):
        cls = getattr(diffusers, scheduler, None)
        if cls is None or not scheduler.endswith("Scheduler"):
            raise UserError(f"unknown scheduler {scheduler!r}; give a diffusers class such as DDIMScheduler")
        return cls.from_config(pipe.scheduler.config)
    return scheduler


def scheduler_record(scheduler) -> dict[str, Any]:  # noqa: ANN001
    return {"class": type(scheduler).__name__, "config": _jsonable(dict(scheduler.config))}


def scheduler_from_record(record: dict[str, Any]):  # noqa: ANN201
    import diffusers

    cls = getattr(diffusers, record["class"], None)
    if cls is None:
        raise UserError(f"scheduler {record['class']} is not in this diffusers version")
    return cls.from_config(record["config"])


@contextmanager
def _swapped_scheduler(pipe, scheduler) -> Iterator[None]:  # noqa: ANN001
    """Sample with ``scheduler`` without changing the (cached, shared) pipeline for the next caller."""
    old = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = old


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and n != old:
            torch.set_num_threads(old)


def image_params(pipe, prompt: str, seeds: Sequence[int], settings: dict[str, Any], scheduler,  # noqa: ANN001
                 negative_prompt: str | None, lora_scale: float | None) -> dict[str, Any]:
    """Everything that shapes an image of this batch (the slot is added per image)."""
    import diffusers
    import torch

    info = getattr(pipe, "pickloop_info", None)
    return {
        "prompt": prompt, "negative_prompt": negative_prompt, **settings,
        "batch_seeds": [int(s) for s in seeds], "scheduler": scheduler_record(scheduler),
        "pipeline": type(pipe).__name__,
        "model": getattr(info, "model", None), "model_path": getattr(info, "model_path", None),
        "model_version_id": getattr(info, "model_version_id", None),
        "model_version": getattr(info, "model_version_name", None),
        "lora_path": getattr(info, "lora_path", None), "lora_sha256": getattr(info, "lora_sha256", None),
        "lora_scale": lora_scale if lora_scale is not None else (1.0 if getattr(info, "lora_path", None) else None),
        "dtype": str(pipe.unet.dtype if getattr(pipe, "unet", None) is not None else pipe.dtype),
        "device": str(pipe.device), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "generator_device": "cpu",
    }


def _draw(pipe, prompt: str | list[str], seeds: Sequence[int], settings: dict[str, Any], scheduler,  # noqa: ANN001
          negative_prompt: str | None, lora_scale: float | None) -> list:
    """One pipeline call; ``prompt`` is one prompt for all ``seeds`` or a list of prompts that share
    them equally (prompt-major: the first prompt's images first), as diffusers orders them."""
    import torch

    per_prompt = len(seeds) // len(prompt) if isinstance(prompt, list) else len(seeds)
    # CPU generators: the starting noise of a seed is the same on every device.
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kwargs: dict[str, Any] = dict(prompt=prompt, num_images_per_prompt=per_prompt, generator=generators,
                                  output_type="pil", **settings)
    if negative_prompt:
        kwargs["negative_prompt"] = negative_prompt
    if lora_scale is not None:
        kwargs["cross_attention_kwargs"] = {"scale": float(lora_scale)}
    info = getattr(pipe, "pickloop_info", None)
    lock = info.lock if info is not None else None
    if lock is not None:
        lock.acquire()
    try:
        with _swapped_scheduler(pipe, scheduler), torch.inference_mode():
            return list(pipe(**kwargs).images)
    finally:
        if lock is not None:
            lock.release()


def sample_candidates(pipe, prompt: str, n: int, *, seeds: Sequence[int] | None = None,  # noqa: ANN001
                      steps: int | None = None, guidance: float | None = None, height: int | None = None,
                      width: int | None = None, negative_prompt: str | None = None,
                      lora_scale: float | None = None, scheduler: Any = None) -> list[tuple[Any, int, dict]]:
    """N images for ``prompt`` in ONE pipeline call: [(PIL image, seed, params)], in slot order.

    ``seeds``: one per image (fresh random seeds where None). ``scheduler``: None (the pipeline's),
    a diffusers scheduler class name built from the pipeline's scheduler config, or an instance.
    Steps, guidance and size default to the model folder's ``pickloop_defaults.json``.
    """
    if n < 1:
        raise UserError("n must be at least 1")
    seeds = [int(s) for s in (fresh_seeds(n) if seeds is None else seeds)]
    if len(seeds) != n:
        raise UserError(f"{len(seeds)} seeds given for {n} images")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise UserError("seeds must be non-negative 63-bit integers")
    settings = resolve_defaults(pipe, steps=steps, guidance=guidance, height=height, width=width)
    sched = make_scheduler(pipe, scheduler)
    base = image_params(pipe, prompt, seeds, settings, sched, negative_prompt, lora_scale)
    images = _draw(pipe, prompt, seeds, settings, sched, negative_prompt, lora_scale)
    return [(img, seed, {**base, "slot": slot}) for slot, (img, seed) in enumerate(zip(images, seeds))]


def sample_sets(pipe, prompts: Sequence[str], seeds: Sequence[Sequence[int]], *,  # noqa: ANN001
                steps: int | None = None, guidance: float | None = None) -> list[list[tuple[Any, int, dict]]]:
    """Several candidate sets, one per prompt, in ONE pipeline call: a batch of len(prompts) x n images.

    ``seeds[i]`` are the n seeds of set i (every set the same n). Returns per set [(image, seed,
    params)] in slot order; ``params`` records the whole batch (``batch_prompts``, ``batch_seeds``,
    ``batch_index``) so that :func:`redraw` replays it. One call for several sets keeps a CPU or GPU
    busier than one call per set (fewer, larger matrix products).
    """
    if not prompts:
        return []
    n = len(seeds[0])
    if len(seeds) != len(prompts) or any(len(s) != n for s in seeds) or n < 1:
        raise UserError("sample_sets needs one list of n >= 1 seeds per prompt, the same n for all")
    if len(prompts) == 1:
        return [sample_candidates(pipe, prompts[0], n, seeds=seeds[0], steps=steps, guidance=guidance)]
    flat = [int(s) for ss in seeds for s in ss]
    settings = resolve_defaults(pipe, steps=steps, guidance=guidance)
    sched = make_scheduler(pipe, None)
    images = _draw(pipe, list(prompts), flat, settings, sched, None, None)
    out = []
    for i, prompt in enumerate(prompts):
        base = image_params(pipe, prompt, flat, settings, sched, None, None)
        base["batch_prompts"] = list(prompts)
        out.append([(images[i * n + slot], int(seeds[i][slot]), {**base, "slot": slot, "batch_index": i * n + slot})
                    for slot in range(n)])
    return out


def _row_params(row) -> dict[str, Any]:  # noqa: ANN001
    params = row.get("params") if isinstance(row, dict) else getattr(row, "params", None)
    if not isinstance(params, dict) or "batch_seeds" not in params:
        raise UserError("this candidate row has no recorded sampling parameters to redraw from")
    return params


def redraw(pipe, candidate_row):  # noqa: ANN001, ANN201 - PIL image
    """Draw a stored candidate again from its row alone (a Candidate or a dict with ``params``).

    Replays the recorded batch (same seeds, scheduler, settings, and thread count) and returns the
    image of the row's slot; bit-identical on the same device, dtype and library versions. A pipeline
    with another model version or LoRA than the row records is refused.
    """
    p = _row_params(candidate_row)
    info = getattr(pipe, "pickloop_info", None)
    if info is not None:
        if p.get("lora_sha256") != info.lora_sha256:
            raise UserError("this pipeline has another LoRA than the one that drew the candidate")
        if None not in (p.get("model_version_id"), info.model_version_id) and \
                p["model_version_id"] != info.model_version_id:
            raise UserError(f"candidate was drawn by model version {p['model_version_id']}, "
                            f"the pipeline is version {info.model_version_id}")
    settings = {k: p[k] for k in ("num_inference_steps", "guidance_scale", "height", "width")}
    sched = scheduler_from_record(p["scheduler"])
    lora_scale = p.get("lora_scale") if p.get("lora_path") else None
    prompt = p.get("batch_prompts") or p["prompt"]  # a batch of several sets replays all of them
    with _threads(p.get("torch_threads")):
        images = _draw(pipe, prompt, p["batch_seeds"], settings, sched, p.get("negative_prompt"), lora_scale)
    return images[int(p.get("batch_index", p["slot"]))]

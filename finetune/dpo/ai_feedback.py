"""AI feedback for Diffusion-DPO: the reward model ranks extra candidate sets drawn by the model the run
starts at (the parent version, or the base), and each set's best image against its worst becomes a
training pair beside the human picks (the "AI feedback" variant of preference tuning, cf. RLAIF,
Lee et al. 2023), at its own loss weight.

The sets are a pure function of (store prompts, config seed): the prompts are chosen from the
store's training split and every image's seed is drawn from a generator seeded by ``cfg.seed``, so
a rerun (or each process of a DDP run) draws and ranks the same sets. They are drawn
``settings.generator_batch_sets`` sets to a pipeline call, as the queue worker draws. The images go into the
content-addressed image store so training loads them like any other; no Comparison or Judgement
rows are written, because these rankings are not labels.
"""
from __future__ import annotations

import random
from typing import Any

from finetune.dpo.config import PairSpec
from generator import load_pipeline, sample_sets
from pickloop.errors import UserError

SEED_LIMIT = 2**31  # as generator.sampling: a seed fits a JSON number and a database integer


def plan_sets(prompts: list[str], n_sets: int, n_candidates: int, seed: int) -> list[tuple[str, list[int]]]:
    """(prompt, seeds) for each AI-feedback set: prompts without repeats until the pool is used up."""
    if not prompts:
        raise UserError("ai_feedback_sets > 0 needs training prompts in the store (split train)")
    rng = random.Random(f"pickloop-dpo-ai-feedback:{seed}")
    order: list[str] = []
    while len(order) < n_sets:
        order += rng.sample(prompts, len(prompts))
    return [(p, [rng.randrange(SEED_LIMIT) for _ in range(n_candidates)]) for p in order[:n_sets]]


def _training_prompts(ctx: Any) -> list[str]:
    from pickloop.db import read_session
    from pickloop.store import list_prompts

    with read_session(ctx.engine) as s:
        return [p.text for p in list_prompts(session=s, split="train")]


def _latest_reward_model(ctx: Any, audience: str = "everyone") -> tuple[Any, int]:
    """The newest registered reward model of ``audience``, loaded, and its registry id; one UserError line if none."""
    from pickloop.db import read_session
    from reward import latest_reward_model_id, load_reward_model

    with read_session(ctx.engine) as s:
        row_id = latest_reward_model_id(session=s, audience=audience)
    if row_id is None:
        train = "pickloop reward train" + ("" if audience == "everyone" else f" --audience {audience}")
        raise UserError(f"ai_feedback_sets > 0 needs a trained reward model: run `{train}` "
                        "first, or set ai_feedback_sets to 0")
    return load_reward_model(ctx=ctx, ref=str(row_id)), int(row_id)


def ai_feedback_pairs(ctx: Any, cfg: Any, *, base: str, parent: Any = None,
                      audience: str = "everyone") -> tuple[list[Any], dict[str, Any]]:
    """Draw ``cfg.ai_feedback_sets`` sets of ``cfg.ai_feedback_candidates`` images with the pipeline
    ``base`` plus the parent's LoRA (``parent``, a ``finetune.lora.ParentLora``; None: the base alone,
    so the pairs come from the policy the run starts at), store them, rank each set by the latest reward
    model of ``audience``,
    and return (best-vs-worst PairSpecs of weight ``cfg.ai_feedback_weight``, a summary for the run's metadata).

    A set whose best and worst score the same (or are the same image) gives no pair.
    """
    from tqdm import tqdm

    reward_model, reward_id = _latest_reward_model(ctx, audience)  # fail before the minutes of drawing
    plan = plan_sets(_training_prompts(ctx), cfg.ai_feedback_sets, cfg.ai_feedback_candidates, cfg.seed)
    pipe = load_pipeline(model=base, lora=parent.lora_dir if parent is not None else None, ctx=ctx,
                         lora_sha256=parent.sha256 if parent is not None else None)
    pairs: list[PairSpec] = []
    margins: list[float] = []
    # several sets in one pipeline call: on a CPU a batch of 32 images costs a fifth less per image than 8
    k = max(1, int(ctx.settings.generator_batch_sets))
    with tqdm(total=len(plan), desc="dpo ai feedback", unit="set") as bar:
        for start in range(0, len(plan), k):
            chunk = plan[start:start + k]
            drawn = sample_sets(pipe, [p for p, _ in chunk], [seeds for _, seeds in chunk])
            for (prompt, _), made in zip(chunk, drawn):
                images = [img for img, _, _ in made]
                keys = [ctx.images.put(img) for img in images]
                scores = reward_model.score(prompt, images).reshape(-1).tolist()
                best = max(range(len(scores)), key=scores.__getitem__)
                worst = min(range(len(scores)), key=scores.__getitem__)
                if scores[best] > scores[worst] and keys[best] != keys[worst]:
                    pairs.append(PairSpec(prompt, keys[best], keys[worst], weight=float(cfg.ai_feedback_weight)))
                    margins.append(scores[best] - scores[worst])
            bar.update(len(chunk))
    summary = {"reward_model_id": reward_id, "drawn_by": parent.name if parent is not None else "base",
               "sets": len(plan), "pairs": len(pairs),
               "weight": float(cfg.ai_feedback_weight),
               "mean_margin": sum(margins) / len(margins) if margins else 0.0}
    return pairs, summary

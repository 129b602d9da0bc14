"""The model registry: each fine-tuning run becomes a ModelVersion; promotion passes a gate first.

Gate (on held-out prompts, fixed seeds): the new version's images and its parent's, drawn from the
same seeds, are scored by a reward model (any callable ``(prompts, images) -> scores``); the win rate
of the new version (ties count half) must reach ``settings.promote_min_win_rate`` by at least
``win_noise_z`` standard errors of itself (std of the per-image outcomes 1 / 0.5 / 0 over sqrt(n)):
a version the reward model cannot tell from its parent (0.53 on 152 images, say) is not worth
swapping in, and a promotion on such noise once replaced a better parent with a worse child. A
version that wins clearly (0.6+) passes; ``win_noise_z=0`` gives the plain threshold. In the shapes world
the judge's prompt-following accuracy (``pickloop.shapes.judge.follows``, every fixed attribute right)
must also not fall by more than ``settings.promote_max_follow_drop`` (2 points) beyond its noise, both
against the parent and against the base model (no LoRA; the parent itself in a first round). Judged
against its parent alone, each round may lose up to the allowance and the drops add up over rounds (in
the loop suite following fell from 0.757 to 0.717 over two promotions that each passed). Against the
base no noise is forgiven (``BASE_FOLLOW_NOISE_Z``): with one standard error forgiven there too, a
second round still passed 0.730 -> 0.684 on the gate's images (0.717 against 0.757 on the held-out ones).

The follow check is paired: both versions draw every (prompt, seed), so only the images where the two
disagree carry information. With b images the parent follows and the new version does not, c the other
way round and n images, the drop is (b - c) / n and its standard error sqrt(b + c) / n (McNemar). The
gate refuses when drop > max_drop + follow_noise_z * standard error: on a few dozen images one or two
images flipping by chance is already 2-3 points, which refused versions that did not follow worse. A
version close to its parent (few flips) gets almost no allowance; a clearly worse one (e.g. 10 points
over 150 images) is refused whatever its noise. ``follow_noise_z=0`` gives the plain 2-point rule.
A version that fails stays a candidate with the reason recorded.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pickloop.errors import UserError
from pickloop.lora_files import load_into_pipeline, verify_lora
from pickloop.pipelines import open_pipeline

Scorer = Callable[[Sequence[str], Sequence[Any]], Sequence[float]]
DEFAULT_GATE_SEEDS = (1234, 5678)
FOLLOW_NOISE_Z = 1.0  # standard errors of the paired follow drop forgiven beyond max_follow_drop
BASE_FOLLOW_NOISE_Z = 0.0  # against the base no noise is forgiven: a line may fall max_follow_drop below it, no more
WIN_NOISE_Z = 1.0  # standard errors by which the win rate must clear its threshold
GATE_BATCH = 32  # images per pipeline call when the gate draws (a CPU draws 32 at a fifth less per image than 8)


def register_version(*, session: Any, base_model: str, parent_id: int | None, method: str, lora_dir: Path | str,
                     lora_sha256: str, data_snapshot: int | None, config_hash: str | None,
                     metrics: dict[str, Any], name: str | None = None, audience: str = "everyone") -> Any:
    """Add a candidate ModelVersion for a trained LoRA (the caller owns the transaction); ``audience``: whom it
    serves once promoted (a run for ``group:NAME`` or ``rater:NAME`` is promoted for that audience only)."""
    from sqlalchemy import func
    from sqlmodel import select

    from pickloop.schema import ModelVersion

    if name is None:
        n = session.exec(select(func.count()).select_from(ModelVersion)).one()
        name = f"{method}-{n + 1}"
    if session.exec(select(ModelVersion).where(ModelVersion.name == name)).first() is not None:
        raise UserError(f"a model version named {name!r} already exists")
    row = ModelVersion(name=name, base_model=base_model, lora_path=str(lora_dir), lora_sha256=lora_sha256,
                       parent_id=parent_id, method=method, status="candidate", data_snapshot=data_snapshot,
                       config_hash=config_hash, metrics=dict(metrics), audience=audience)
    session.add(row)
    session.flush()
    return row


def next_version_name(*, session: Any, method: str) -> str:
    from sqlalchemy import func
    from sqlmodel import select

    from pickloop.schema import ModelVersion

    n = session.exec(select(func.count()).select_from(ModelVersion)).one()
    return f"{method}-{n + 1}"


# ---------------------------------------------------------------- the gate

@dataclass
class GateResult:
    passed: bool
    win_rate: float
    n_images: int
    win_rate_se: float | None = None
    follow_new: float | None = None
    follow_parent: float | None = None
    follow_drop_se: float | None = None  # standard error of the paired drop (see the module docstring)
    follow_base: float | None = None  # the base model's (no LoRA) on the same prompts and seeds
    follow_base_drop_se: float | None = None
    reason: str | None = None
    judged_win: bool = True  # False: the win rate was recorded, not required (an untrusted reward model)

    def as_metrics(self) -> dict[str, Any]:
        return {f"gate_{k}": v for k, v in asdict(self).items()}


def win_outcomes(new_scores: Sequence[float], parent_scores: Sequence[float]) -> list[float]:
    """Per seed: 1 where the new image scores higher, 0.5 for a tie, 0 where the parent's does."""
    pairs = list(zip(map(float, new_scores), map(float, parent_scores)))
    if not pairs:
        raise UserError("no images to compare for the promotion gate")
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]


def win_rate(new_scores: Sequence[float], parent_scores: Sequence[float]) -> float:
    """Share of seeds where the new image scores higher (ties count half)."""
    outcomes = win_outcomes(new_scores, parent_scores)
    return sum(outcomes) / len(outcomes)


def followed(prompts: Sequence[str], images: Sequence[Any]) -> list[bool]:
    """Per image: the judge reads every attribute its prompt fixes right."""
    from pickloop.shapes.judge import follows

    return [all(follows(p, im).values()) for p, im in zip(prompts, images)]


def paired_follow(new: Sequence[bool], old: Sequence[bool]) -> tuple[float, float, float]:
    """(follow rate of the new images, of the old ones, standard error of the paired drop) from ``followed``."""
    n = len(new)
    flips = sum(a != b for a, b in zip(new, old))
    return sum(new) / n, sum(old) / n, flips ** 0.5 / n


def judge_gate(prompts: Sequence[str], new_images: Sequence[Any], parent_images: Sequence[Any], scorer: Scorer, *,
               min_win_rate: float, max_follow_drop: float | None,
               follow_noise_z: float = FOLLOW_NOISE_Z, win_noise_z: float = WIN_NOISE_Z,
               judge_win: bool = True, base_images: Sequence[Any] | None = None,
               base_noise_z: float = BASE_FOLLOW_NOISE_Z) -> GateResult:
    """Apply the gate to images already drawn (same prompt and seed at each index).

    ``judge_win=False``: the scorer's win rate is recorded but not required (a reward model too inaccurate
    to trust must not refuse, or pass, a version on its say); prompt following still decides.
    ``base_images``: the base model's (no LoRA; the parent's own when the parent is the base): following must
    not have fallen more than ``max_follow_drop`` + ``base_noise_z`` standard errors below the base's
    either, so drops cannot add up over rounds."""
    outcomes = win_outcomes(list(scorer(prompts, new_images)), list(scorer(prompts, parent_images)))
    n = len(outcomes)
    rate = sum(outcomes) / n
    se = (sum((x - rate) ** 2 for x in outcomes) / max(n - 1, 1)) ** 0.5 / n ** 0.5
    result = GateResult(passed=True, win_rate=rate, n_images=len(prompts), win_rate_se=se, judged_win=judge_win)
    reasons = []
    if judge_win and rate - win_noise_z * se < min_win_rate - 1e-12:
        reasons.append(f"win rate {rate:.3f} against parent below {min_win_rate:.3f}"
                       + (f" + {win_noise_z:g} x {se:.3f} noise" if win_noise_z and se else ""))
    if max_follow_drop is not None:
        new_ok, parent_ok = followed(prompts, new_images), followed(prompts, parent_images)
        result.follow_new, result.follow_parent, se = paired_follow(new_ok, parent_ok)
        result.follow_drop_se = se
        allowed = max_follow_drop + follow_noise_z * se
        if result.follow_new < result.follow_parent - allowed - 1e-12:
            reasons.append(f"prompt-following fell from {result.follow_parent:.3f} to {result.follow_new:.3f} "
                           f"(more than {max_follow_drop:.2f} + {follow_noise_z:g} x {se:.3f} noise)")
        if base_images is not None:
            base_ok = parent_ok if base_images is parent_images else followed(prompts, base_images)
            _, result.follow_base, se = paired_follow(new_ok, base_ok)
            result.follow_base_drop_se = se
            allowed = max_follow_drop + base_noise_z * se
            if result.follow_new < result.follow_base - allowed - 1e-12:
                noise = f" + {base_noise_z:g} x {se:.3f} noise" if base_noise_z else ""
                reasons.append(f"prompt-following {result.follow_new:.3f} is below the base model's "
                               f"{result.follow_base:.3f} (more than {max_follow_drop:.2f}{noise})")
    if reasons:
        result.passed, result.reason = False, "; ".join(reasons)
    return result


_DRAWN: dict[tuple, list[Any]] = {}  # the gate's images of recent versions: a parent is drawn once per process
_DRAWN_KEEP = 6  # the base's images, the parent's and a few candidates'


def draw_images(base: str, lora_dir: str | None, lora_sha256: str | None, prompts: Sequence[str],
                seeds: Sequence[int], *, steps: int = 10, guidance: float = 5.0) -> list[Any]:
    """Images for prompts[i] with seed seeds[i] from ``base`` plus an optional verified LoRA.

    The images of the last few (model, LoRA sha256, prompts, seeds, steps) are kept in memory: several
    candidates judged against one parent, or a version judged again as the next round's parent, reuse
    its images instead of drawing them again (the sha256 names the exact weights, so they are the same)."""
    key = (base, lora_sha256 if lora_dir else None, tuple(prompts), tuple(int(s) for s in seeds), steps, guidance)
    if key in _DRAWN:
        _DRAWN[key] = _DRAWN.pop(key)  # the most recently used is kept longest
        return list(_DRAWN[key])
    images = _draw_images(base, lora_dir, lora_sha256, prompts, seeds, steps=steps, guidance=guidance)
    _DRAWN[key] = images
    while len(_DRAWN) > _DRAWN_KEEP:
        _DRAWN.pop(next(iter(_DRAWN)))
    return list(images)


def _draw_images(base: str, lora_dir: str | None, lora_sha256: str | None, prompts: Sequence[str],
                 seeds: Sequence[int], *, steps: int, guidance: float) -> list[Any]:
    import torch

    lora = verify_lora(lora_dir, expected_sha256=lora_sha256) if lora_dir else None
    pipe = open_pipeline(base, safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        load_into_pipeline(pipe, lora, adapter_name="gate")
    out = []
    for start in range(0, len(prompts), GATE_BATCH):
        ps, ss = list(prompts[start:start + GATE_BATCH]), seeds[start:start + GATE_BATCH]
        gens = [torch.Generator().manual_seed(int(s)) for s in ss]
        out += pipe(ps, num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
    return out


def gate_prompts(ctx: Any, prompts: Sequence[str] | None = None, n: int = 16, audience: str = "everyone") -> list[str]:
    """Held-out prompts: the given list, else the store's ``heldout`` split (for an audience, the held-out
    prompts its raters labelled first), else (embedded) the shapes pool."""
    if prompts:
        return list(prompts)
    from pickloop.db import read_session
    from pickloop.store import list_prompts

    with read_session(ctx.engine) as s:
        found = [p.text for p in list_prompts(session=s, split="heldout")]
        if audience != "everyone":
            from pickloop.audiences import audience_rater_ids
            from pickloop.store import preference_pairs

            ids = audience_rater_ids(session=s, audience=audience)
            theirs = {p.prompt for p in preference_pairs(session=s, split="heldout", rater_ids=ids)}
            found = [t for t in found if t in theirs] + [t for t in found if t not in theirs]
        found = found[:n]
    if not found and ctx.base_model.startswith("embedded:"):
        from pickloop.shapes.world import prompt_pool

        found = prompt_pool("heldout", n=n)
    if not found:
        raise UserError("no held-out prompts for the promotion gate: add prompts or pass --prompts")
    return found


def resolve_scorer(ctx: Any, spec: str = "reward", audience: str = "everyone") -> Scorer:
    """``reward``: the newest reward model of ``audience`` (trained on its labels; everyone's by default);
    ``MODULE:FUNC`` or ``FILE.py:FUNC``: any scorer callable."""
    if spec == "reward":
        from reward import load_latest

        model = load_latest(ctx=ctx, audience=audience)
        return lambda prompts, images: model.score(list(prompts), list(images)).tolist()
    if ":" not in spec:
        raise UserError(f"scorer must be 'reward' or MODULE:FUNC / FILE.py:FUNC, not {spec!r}")
    mod_name, func = spec.rsplit(":", 1)
    if mod_name.endswith(".py") and not Path(mod_name).is_file():
        raise UserError(f"scorer file {mod_name} not found")
    try:
        if mod_name.endswith(".py"):
            spec_obj = importlib.util.spec_from_file_location("pickloop_user_scorer", mod_name)
            module = importlib.util.module_from_spec(spec_obj)
            spec_obj.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - the user's module may fail to import in any way
        raise UserError(f"scorer {spec}: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, func, None)):
        raise UserError(f"scorer {spec} is not a callable")
    return getattr(module, func)


def is_shapes_world(base_model: str) -> bool:
    return base_model.startswith("embedded:")


def verify_version_lora(version: Any) -> None:
    """The version's LoRA file matches the sha256 the registry and its manifest recorded and is sound
    (``pickloop.lora_files.verify_lora``); one UserError line naming the file otherwise. The base has none."""
    if version.lora_path:
        verify_lora(version.lora_path, expected_sha256=version.lora_sha256, require_manifest=True)


def gate_and_promote(ctx: Any, ref: str | int, *, scorer: Scorer | None = None, prompts: Sequence[str] | None = None,
                     seeds: Sequence[int] = DEFAULT_GATE_SEEDS, force: bool = False,
                     shapes: bool | None = None, follow_noise_z: float = FOLLOW_NOISE_Z,
                     win_noise_z: float = WIN_NOISE_Z, judge_win: bool = True,
                     promote_if_passed: bool = True) -> GateResult | None:
    """Run the gate for version ``ref`` against its parent; promote it when it passes (or ``force``), for the
    audience it was trained for (``ModelVersion.audience``), whose reward model scores it (unless ``scorer``)
    and whose held-out prompts come first.

    Returns the gate result (None when forced). A failed version stays a candidate with ``reason`` set.
    ``promote_if_passed=False`` records the gate's figures only (to choose among several candidates of
    one parent, then ``promote_version`` the best); ``judge_win``: see ``judge_gate``.
    """
    from pickloop.context import resolve_model_ref
    from pickloop.db import read_session, write_session
    from pickloop.schema import ModelVersion
    from pickloop.store import find_version, promote

    with read_session(ctx.engine) as s:
        version = find_version(session=s, ref=ref)
        parent = s.get(ModelVersion, version.parent_id) if version.parent_id else None
    verify_version_lora(version)  # forced or not, a damaged file is never promoted
    if force:
        with write_session(ctx.engine) as s:
            row = s.get(ModelVersion, version.id)
            row.metrics = {**row.metrics, "forced_promotion": True}
            promote(session=s, version=row)
        return None
    if parent is None:
        raise UserError(f"version {version.name} has no parent to be compared with; use --force")
    st = ctx.settings
    scorer = scorer or resolve_scorer(ctx, audience=version.audience)  # no reward model: one line before drawing
    texts = gate_prompts(ctx, prompts, audience=version.audience)
    all_prompts = [t for t in texts for _ in seeds]
    all_seeds = [sd for _ in texts for sd in seeds]
    base = resolve_model_ref(version.base_model)
    new_imgs = draw_images(base, version.lora_path, version.lora_sha256, all_prompts, all_seeds,
                           steps=st.promote_gate_steps)
    old_imgs = draw_images(resolve_model_ref(parent.base_model), parent.lora_path, parent.lora_sha256,
                           all_prompts, all_seeds, steps=st.promote_gate_steps)
    shapes = is_shapes_world(version.base_model) if shapes is None else shapes
    base_imgs = None
    if shapes:  # following is also held to the base model's (the parent's images when the parent is the base)
        base_imgs = old_imgs if not parent.lora_path else draw_images(
            base, None, None, all_prompts, all_seeds, steps=st.promote_gate_steps)
    result = judge_gate(all_prompts, new_imgs, old_imgs, scorer,
                        min_win_rate=st.promote_min_win_rate,
                        max_follow_drop=st.promote_max_follow_drop if shapes else None,
                        follow_noise_z=follow_noise_z, win_noise_z=win_noise_z, judge_win=judge_win,
                        base_images=base_imgs)
    with write_session(ctx.engine) as s:
        row = s.get(ModelVersion, version.id)
        row.metrics = {**row.metrics, **result.as_metrics()}
        if result.passed and promote_if_passed:
            promote(session=s, version=row)
        else:
            row.reason = result.reason
            s.add(row)
    return result


def promote_version(ctx: Any, ref: str | int) -> None:
    """Promote version ``ref`` whose gate already passed (see ``gate_and_promote(promote_if_passed=False)``)."""
    from pickloop.db import write_session
    from pickloop.store import find_version, promote

    with write_session(ctx.engine) as s:
        row = find_version(session=s, ref=ref)
        if not row.metrics.get("gate_passed"):
            raise UserError(f"version {row.name} has not passed the promotion gate")
        verify_version_lora(row)  # still the file the gate judged
        promote(session=s, version=row)

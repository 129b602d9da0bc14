"""How the loop is judged: the rater's oracle win rate against the base at fixed seeds, and prompt following."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from generator import sample_sets
from pickloop.shapes.judge import follow_accuracy, follows

Taste = Callable[[Image.Image, "str | None"], float]


@dataclass
class FixedSeedImages:
    """Images of one model version on the held-out prompts: ``images[i]`` for ``(prompts[i], seeds[i])``."""

    prompts: list[str]
    seeds: list[int]
    images: list[Image.Image]


def draw_fixed(pipe, prompts: Sequence[str], seeds_per_prompt: int, *, seed: int = 0,  # noqa: ANN001
               prompts_per_call: int = 4) -> FixedSeedImages:
    """Every prompt drawn with the same fixed seeds, ``prompts_per_call`` prompts to a batched call."""
    seeds = [1_000_003 * (seed + 1) + k for k in range(seeds_per_prompt)]
    out = FixedSeedImages([], [], [])
    prompts = list(prompts)
    for start in range(0, len(prompts), prompts_per_call):
        chunk = prompts[start:start + prompts_per_call]
        for p, made in zip(chunk, sample_sets(pipe, chunk, [seeds] * len(chunk))):
            for img, s, _ in made:
                out.prompts.append(p)
                out.seeds.append(s)
                out.images.append(img)
    return out


def oracle_win_rate(taste: Taste, new: FixedSeedImages, base: FixedSeedImages) -> float:
    """Share of (prompt, seed) where the taste scores the new image above the base's; equal counts half."""
    assert new.prompts == base.prompts and new.seeds == base.seeds
    return sum(_win(taste, p, a, b) for p, a, b in zip(new.prompts, new.images, base.images)) / len(new.prompts)


def _win(taste: Taste, prompt: str, new: Image.Image, base: Image.Image) -> float:
    """1 if the taste scores ``new`` above ``base``, 0.5 if equal, else 0."""
    sa, sb = taste(new, prompt), taste(base, prompt)
    return 1.0 if sa > sb else 0.5 if sa == sb else 0.0


def follow_rate(images: FixedSeedImages) -> float:
    """The judge's prompt-following accuracy (share of images right on every attribute their prompt fixes)."""
    return follow_accuracy(images.prompts, images.images)["overall"]


def follow_detail(taste: Taste, new: FixedSeedImages, base: FixedSeedImages) -> dict:
    """Where the new version follows prompts better or worse than the base, and where it wins.

    ``by_attribute``: {attribute: [base, new]} share of images right on that attribute (over the prompts
    that fix it); ``by_prompt``: [prompt, win rate, follow base, follow new] for each held-out prompt,
    the prompts whose following fell most first. The overall rate can rise while some prompts lose an
    attribute; this is what shows it.
    """
    assert new.prompts == base.prompts and new.seeds == base.seeds
    attrs: dict[str, list[list[bool]]] = {}
    per_prompt: dict[str, list[list[float]]] = {}
    for p, a, b in zip(new.prompts, new.images, base.images):
        fb, fa = follows(p, b), follows(p, a)
        for attr in fb:
            attrs.setdefault(attr, [[], []])
            attrs[attr][0].append(fb[attr])
            attrs[attr][1].append(fa[attr])
        per_prompt.setdefault(p, []).append([_win(taste, p, a, b), float(all(fb.values())), float(all(fa.values()))])
    by_attribute = {k: [sum(v[0]) / len(v[0]), sum(v[1]) / len(v[1])] for k, v in attrs.items()}
    by_prompt = [[p] + [sum(col) / len(rows) for col in zip(*rows)] for p, rows in per_prompt.items()]
    by_prompt.sort(key=lambda r: (r[3] - r[2], r[1]))
    return {"by_attribute": by_attribute, "by_prompt": by_prompt}


def mean_taste(taste: Taste, images: FixedSeedImages) -> float:
    return sum(taste(im, p) for p, im in zip(images.prompts, images.images)) / len(images.images)


def taste_agreement(taste: Taste, scores: Sequence[float], images: FixedSeedImages, *, margin: float) -> float | None:
    """How well a reward model knows the taste itself, not the rater's noisy picks: the share of pairs of
    images of the same held-out prompt (never labelled) that ``scores`` order as the taste does, over the
    pairs the taste separates by more than ``margin`` (the rater's tie margin). None without such pairs."""
    by_prompt: dict[str, list[tuple[float, float]]] = {}
    for p, im, s in zip(images.prompts, images.images, scores):
        by_prompt.setdefault(p, []).append((float(taste(im, p)), float(s)))
    right = total = 0.0
    for rows in by_prompt.values():
        for i in range(len(rows)):
            for k in range(i + 1, len(rows)):
                (ta, ra), (tb, rb) = rows[i], rows[k]
                if abs(ta - tb) <= margin:
                    continue
                total += 1
                right += 0.5 if ra == rb else float((ra > rb) == (ta > tb))
    return right / total if total else None


def label_ceiling(taste: Taste, pairs: Sequence[tuple[str, Image.Image, Image.Image]]) -> float | None:
    """The taste's own accuracy on the rater's decided pairs (prompt, winner, loser): the most any reward
    model can reach against these labels, as the rater's Bradley-Terry noise picks a worse image at times."""
    if not pairs:
        return None
    right = 0.0
    for p, won, lost in pairs:
        sw, sl = taste(won, p), taste(lost, p)
        right += 1.0 if sw > sl else 0.5 if sw == sl else 0.0
    return right / len(pairs)

"""Noise memory: reuse the seeds of candidates that won, for prompts like the ones they won for.

Some starting noises suit a concept better than others ("Not All Noises Are Created Equally",
Qi et al. 2024: choosing the noise raised human win rates to about 57%). For a new set, a share
(``settings.noise_memory_share``) of the candidates start from seeds that won for the most similar
prompts; similarity is the cosine of the pipeline's own pooled text-encoder embeddings. Those
candidates are marked ``from_noise_memory`` so that :func:`noise_memory_stats` can compare their win
rate with fresh seeds'.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from sqlalchemy import case, func
from sqlmodel import Session, select

from generator.sampling import fresh_seeds
from pickloop.schema import Candidate, Judgement, ModelVersion, Prompt

MAX_WINNERS = 5000  # most-winning (prompt, seed) pairs considered; enough for any real pool


@dataclass(frozen=True)
class Winner:
    prompt: str
    seed: int
    wins: int


def winning_seeds(*, session: Session, base_model: str | None = None, limit: int = MAX_WINNERS) -> list[Winner]:
    """Seeds of candidates that won a pick, per prompt, most wins first (optionally for one base model)."""
    wins = func.count(Judgement.id)
    q = (select(Prompt.text, Candidate.seed, wins).select_from(Judgement)
         .join(Candidate, Judgement.winner_id == Candidate.id)
         .join(Prompt, Candidate.prompt_id == Prompt.id).where(Judgement.choice == "pick"))
    if base_model is not None:
        # a seed means the same starting noise only for the same base model (latent shape)
        q = q.join(ModelVersion, Candidate.model_version_id == ModelVersion.id) \
             .where(ModelVersion.base_model == base_model)
    q = q.group_by(Prompt.text, Candidate.seed).order_by(wins.desc(), Candidate.seed).limit(limit)
    return [Winner(text, int(seed), int(k)) for text, seed, k in session.exec(q)]


def prompt_embeddings(pipe, texts: Sequence[str]):  # noqa: ANN001, ANN201 - torch.Tensor (len(texts), d)
    """Unit-length pooled embeddings of ``texts`` from the pipeline's first text encoder, cached per text.

    CLIP's pooled output (the end-of-text token) where the encoder has one, else the mean token state.
    """
    import torch

    info = getattr(pipe, "pickloop_info", None)
    cache: dict[str, Any] = info.embed_cache if info is not None else {}
    todo = [t for t in dict.fromkeys(texts) if t not in cache]
    tok, enc = pipe.tokenizer, pipe.text_encoder
    for i in range(0, len(todo), 64):
        chunk = todo[i:i + 64]
        ids = tok(chunk, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(enc.device)
        with torch.inference_mode():
            out = enc(ids)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = out[0].mean(dim=1)
        pooled = torch.nn.functional.normalize(pooled.float().cpu(), dim=-1)
        cache.update(zip(chunk, pooled))
    return torch.stack([cache[t] for t in texts]) if texts else torch.empty(0, 0)


def memory_count(n: int, share: float, enabled: bool) -> int:
    """Candidates of a set of ``n`` drawn from memory: the share, rounded, at most n."""
    return min(n, int(round(n * share))) if enabled else 0


def pick_memory_seeds(pipe, prompt: str, winners: list[Winner], k: int) -> list[int]:  # noqa: ANN001
    """Up to ``k`` distinct seeds that won for the prompts most similar to ``prompt`` (ties: more wins first)."""
    if k <= 0 or not winners:
        return []
    texts = list(dict.fromkeys(w.prompt for w in winners))
    emb = prompt_embeddings(pipe, [prompt] + texts)
    sim = dict(zip(texts, (emb[1:] @ emb[0]).tolist()))
    ranked = sorted(winners, key=lambda w: (-sim[w.prompt], -w.wins, w.seed))
    return list(dict.fromkeys(w.seed for w in ranked))[:k]


def seed_source(*, session: Session, prompt: str, sampling_seed: int | None) -> random.Random:
    """Where a new set's seeds come from: the OS's randomness, or with ``sampling_seed`` (benchmarks) a
    generator seeded by it, the prompt and how many images the prompt has already, so that a run
    repeats exactly, whichever worker draws which set."""
    if sampling_seed is None:
        return random.SystemRandom()
    drawn = session.exec(select(func.count()).select_from(Candidate).join(Prompt, Candidate.prompt_id == Prompt.id)
                         .where(Prompt.text == prompt)).one()
    return random.Random(f"{int(sampling_seed)}|{prompt}|{int(drawn)}")


def choose_seeds(pipe, *, session: Session, prompt: str, n: int, settings) -> tuple[list[int], list[bool]]:  # noqa: ANN001
    """Seeds for a new set of ``n`` and, per slot, whether it came from noise memory (slots shuffled)."""
    rng = seed_source(session=session, prompt=prompt, sampling_seed=getattr(settings, "sampling_seed", None))
    k = memory_count(n, settings.noise_memory_share, settings.noise_memory)
    info = getattr(pipe, "pickloop_info", None)
    remembered = pick_memory_seeds(pipe, prompt, winning_seeds(session=session, base_model=getattr(
        info, "model", None)), k) if k else []
    fresh = [s for s in fresh_seeds(n + len(remembered), rng) if s not in remembered][: n - len(remembered)]
    slots = [(s, True) for s in remembered] + [(s, False) for s in fresh]
    rng.shuffle(slots)  # a memory seed must not always sit in the first position
    return [s for s, _ in slots], [m for _, m in slots]


@dataclass(frozen=True)
class NoiseMemoryStats:
    """Win rates over picked sets: a candidate 'wins' when the rater picked it among those shown."""

    memory_shown: int
    memory_wins: int
    fresh_shown: int
    fresh_wins: int

    @property
    def memory_win_rate(self) -> float | None:
        return self.memory_wins / self.memory_shown if self.memory_shown else None

    @property
    def fresh_win_rate(self) -> float | None:
        return self.fresh_wins / self.fresh_shown if self.fresh_shown else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory_win_rate": self.memory_win_rate, "fresh_win_rate": self.fresh_win_rate}


def noise_memory_stats(*, session: Session) -> NoiseMemoryStats:
    """Shown and won counts of memory-seeded vs fresh candidates in every set answered with a pick."""
    won = func.sum(case((Judgement.winner_id == Candidate.id, 1), else_=0))
    q = (select(Candidate.from_noise_memory, func.count(), won).select_from(Judgement)
         .join(Candidate, Candidate.comparison_id == Judgement.comparison_id)
         .where(Judgement.choice == "pick").group_by(Candidate.from_noise_memory))
    counts = {bool(m): (int(shown), int(w or 0)) for m, shown, w in session.exec(q)}
    (ms, mw), (fs, fw) = counts.get(True, (0, 0)), counts.get(False, (0, 0))
    return NoiseMemoryStats(memory_shown=ms, memory_wins=mw, fresh_shown=fs, fresh_wins=fw)

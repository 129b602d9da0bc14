"""Per-prompt reward normalisation (Black et al. 2023, sec. 5)."""
from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import torch


class PerPromptStatTracker:
    """Normalise each reward by the recent rewards of the same prompt (Black et al. 2023, sec. 5).

    Each prompt keeps its last ``buffer_size`` rewards; a prompt with fewer than ``min_count`` uses
    the statistics of the whole current batch instead. advantage = (r - mean) / (std + 1e-6).
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16) -> None:
        if min_count > buffer_size:
            raise ValueError("min_count cannot exceed buffer_size")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Advantages (B,) float32 for rewards (B,) of ``prompts``; adds the rewards to the buffers."""
        r = np.asarray(torch.as_tensor(rewards, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
        if len(prompts) != len(r):
            raise ValueError(f"{len(prompts)} prompts but {len(r)} rewards")
        out = np.empty_like(r)
        batch_mean, batch_std = r.mean(), r.std()
        for prompt in dict.fromkeys(prompts):
            idx = [i for i, p in enumerate(prompts) if p == prompt]
            buf = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(r[idx].tolist())
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                mean, std = np.mean(buf), np.std(buf)
            out[idx] = (r[idx] - mean) / (std + 1e-6)
        return torch.from_numpy(out).float()

    def state_dict(self) -> dict[str, list[float]]:
        return {p: list(b) for p, b in self.buffers.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.buffers = {p: deque(v, maxlen=self.buffer_size) for p, v in state.items()}

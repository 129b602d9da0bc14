"""The closed loop's settings: one typed config, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field

from pickloop.config_base import ConfigBase
from pickloop.errors import UserError

METHODS = ("auto", "dpo", "ddpo", "both")


@dataclass
class LoopConfig(ConfigBase):
    taste: str = field(default="large", metadata={"help": "registered taste or FILE.py:FUNCTION"})
    labels: int = field(default=400, metadata={"help": "labels in all, split evenly over the rounds"})
    rounds: int = field(default=2, metadata={"help": "label -> reward -> fine-tune -> gate rounds"})
    method: str = field(default="auto", metadata={
        "choices": METHODS,
        "help": "auto (as `finetune run`: the data decide; see finetune/auto.py), dpo, ddpo or both (dpo then ddpo)"})
    candidates: int = field(default=4, metadata={"help": "candidates per labelled set (2-4)"})
    open_attributes: tuple[str, ...] = field(default=("color", "size"),
                                             metadata={"help": "what loop prompts leave open for the taste"})
    train_prompts: int = field(default=60, metadata={"help": "prompts in the loop's training pool"})
    eval_prompts: int = field(default=24, metadata={"help": "held-out prompts for the win rate (or all there are)"})
    eval_seeds: int = field(default=8, metadata={"help": "fixed seeds per held-out prompt"})
    gate_seeds: int = field(default=8, metadata={"help": "fixed seeds per held-out prompt for the gate (other seeds)"})
    rater_temperature: float = field(default=0.05, metadata={"help": "Bradley-Terry noise of the rater"})
    rater_tie_margin: float = field(default=0.02, metadata={"help": "rater says tie below this score gap"})
    dpo_steps: int = field(default=500, metadata={"help": "DPO optimiser steps per round"})
    dpo_lr: float = field(default=3e-4, metadata={"help": "DPO learning rate"})
    dpo_beta: float = field(default=2500.0, metadata={"help": "DPO KL strength beta"})
    dpo_ai_feedback_sets: int = field(default=150, metadata={
        "help": "extra candidate sets the reward model ranks for DPO each round (best vs worst); 0 = off; "
                "with --method auto the run decides"})
    dpo_ai_feedback_candidates: int = field(default=8, metadata={"help": "images per AI-feedback set (2-16)"})
    dpo_ai_feedback_weight: float = field(default=1.0, metadata={"help": "loss weight of an AI-ranked pair"})
    ddpo_epochs: int = field(default=8, metadata={"help": "DDPO epochs per round (other settings: DDPOConfig)"})
    gate_win_rate: float = field(default=0.5, metadata={"help": "reward-model win rate vs parent to promote"})
    seed: int = field(default=0, metadata={"help": "seed of the rater, prompts and evaluation"})

    section = "loop"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.rounds < 1 or self.labels < self.rounds:
            raise UserError("need at least one round and one label per round")
        if not 2 <= self.candidates <= 4:
            raise UserError("candidates per set must be 2-4")
        bad = set(self.open_attributes) - {"color", "size", "shape", "position", "background"}
        if bad:
            raise UserError(f"unknown attribute(s) to leave open: {', '.join(sorted(bad))}")
        if self.dpo_ai_feedback_sets < 0 or not 2 <= self.dpo_ai_feedback_candidates <= 16:
            raise UserError("--dpo-ai-feedback-sets must be >= 0 and --dpo-ai-feedback-candidates 2-16")
        if self.eval_prompts < 1 or self.eval_seeds < 1:
            raise UserError("need at least one held-out prompt and one seed")
        from pickloop.shapes.tastes import load_taste

        try:  # an unknown taste or a missing FILE.py is refused before any model loads
            load_taste(self.taste)
        except Exception as e:  # noqa: BLE001 - a user's taste file may raise anything while loading
            raise UserError(f"--taste {self.taste}: {e}") from None

    @property
    def labels_per_round(self) -> int:
        return self.labels // self.rounds

"""The reward model's training settings (no torch import, so the CLI's --help stays fast)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pickloop.config_base import ConfigBase
from pickloop.errors import UserError


@dataclass
class RewardConfig(ConfigBase):
    """Settings of one reward-model training run."""

    backbone: str = field(default="embedded:shapes-clip", metadata={"help": "CLIPModel folder or hub id"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the head"})
    lora_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of backbone LoRA adapters"})
    epochs: int = field(default=300, metadata={"help": "most passes over the training pairs"})
    batch_size: int = field(default=64, metadata={"help": "pairs per optimizer step"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    head_width: int = field(default=64, metadata={"help": "hidden units of the head MLP (0 = linear head)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the head while training"})
    seed: int = field(default=0, metadata={"help": "seed of the head's init and of the batch order"})
    patience: int = field(default=30, metadata={"help": "epochs without a better held-out loss before stopping"})
    heldout_share: float = field(default=0.1, metadata={"help": "share of prompts held out (by a hash of the text)"})
    lora_rank: int = field(default=0, metadata={"help": "0 = frozen backbone; >0 = LoRA rank on the backbone"})
    # A tie on a set of 3-4 says the best two are equal, not all of them; as 0.5 targets on every pair of
    # the set it taught the head to flatten (on 200 loop labels, 116 of them ties: early stopping chose
    # epoch 0, cross-validated accuracy 0.742; without ties: epoch 42, 0.778).
    include_ties: bool = field(default=False, metadata={"help": "train on ties as 0.5/0.5 targets on every pair "
                                                                 "of the set"})
    cv_folds: int = field(default=5, metadata={
        "help": "folds of prompts for the cross-validated accuracy that says how far to trust the model (0 = off)"})

    section = "reward"
    not_hashed = ("cv_folds",)  # measures; changes no weight

    def validate(self) -> None:
        checks = [
            (self.lr > 0 and self.lora_lr > 0, "learning rates must be > 0"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch size must be >= 1"),
            (self.weight_decay >= 0, "weight decay must be >= 0"),
            (self.head_width >= 0, "head width must be >= 0"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.patience >= 1, "patience must be >= 1 epoch"),
            (0.0 < self.heldout_share < 1.0, "held-out share must be between 0 and 1"),
            (self.lora_rank >= 0, "LoRA rank must be >= 0"),
            (self.cv_folds == 0 or self.cv_folds >= 2, "cv_folds must be 0 (off) or >= 2"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"reward config: {msg}")

    def model_kwargs(self) -> dict:
        return dict(head_width=self.head_width, dropout=self.dropout, lora_rank=self.lora_rank, seed=self.seed)


@dataclass
class RewardBenchConfig(ConfigBase):
    """Settings of the reward bench."""

    taste: str = field(default="large", metadata={"help": "registered taste name or FILE.py:FUNC"})
    labels: int = field(default=300, metadata={"help": "judgements the rater gives for training"})
    candidates: int = field(default=4, metadata={"help": "images per training set (2-4)"})
    train_prompts: int = field(default=100, metadata={"help": "training prompts the labels spread over"})
    test_pairs: int = field(default=400, metadata={"help": "held-out pairs, each answered twice"})
    off_prompt_share: float = field(default=0.0, metadata={"help": "share of candidates that break their prompt"})
    seed: int = field(default=0, metadata={"help": "seed of prompts, candidates and the rater"})

    section = "reward bench"

    def validate(self) -> None:
        if self.labels < 10:
            raise UserError("the reward bench needs at least 10 labels")
        if not 2 <= self.candidates <= 4:
            raise UserError("candidates per set must be 2-4")
        if not 0.0 <= self.off_prompt_share <= 1.0:
            raise UserError("off-prompt share must be in [0, 1]")
        if self.train_prompts < 2 or self.test_pairs < 10:
            raise UserError("the reward bench needs >= 2 training prompts and >= 10 test pairs")

"""The one config base (``pickloop.config_base``): unknown keys, stable hashes, and the one parser's
precedence (the class's defaults < the command's < the --config file < flags given)."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import pytest

from finetune.ddpo.config import DDPOConfig
from finetune.dpo.config import DPOConfig
from pickloop.config_base import ConfigBase, add_flags, config_from_args
from pickloop.errors import UserError
from pickloop.loop.config import LoopConfig
from reward.config import RewardConfig


@dataclass
class Toy(ConfigBase):
    steps: int = field(default=10, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    size: int | None = field(default=None, metadata={"help": "pixels; None = the model's"})
    fast: bool = field(default=False, metadata={"help": "skip the slow part"})
    kind: str = field(default="a", metadata={"help": "a or b", "choices": ("a", "b")})
    targets: tuple[str, ...] = field(default=("x", "y"), metadata={"help": "modules"})
    log_every: int = field(default=5, metadata={"help": "print every N steps"})

    section = "toy"
    hash_tag = "toy"
    not_hashed = ("log_every",)

    def validate(self) -> None:
        if self.steps < 1:
            raise UserError(f"toy steps must be >= 1, not {self.steps}")


def _parse(*argv: str, defaults: dict | None = None) -> Toy:
    parser = argparse.ArgumentParser()
    add_flags(parser, Toy, defaults)
    return config_from_args(Toy, parser.parse_args(list(argv)))


# ---------------------------------------------------------------- from_dict, validation, hash

def test_an_unknown_key_is_one_line_naming_the_known_settings():
    with pytest.raises(UserError) as e:
        Toy.from_dict({"stpes": 3, "zzz": 1})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unknown toy setting(s): stpes, zzz")
    assert "did you mean stpes -> steps?" in msg
    assert "the toy settings are: steps, lr, size, fast, kind, targets, log_every" in msg
    with pytest.raises(UserError, match="unknown dpo setting.*betta -> beta.*the dpo settings are: rank, alpha"):
        DPOConfig.from_dict({"betta": 1})
    with pytest.raises(UserError, match="mapping"):
        Toy.from_dict([1])  # type: ignore[arg-type]


def test_types_are_checked_before_the_class_checks():
    with pytest.raises(UserError, match="toy setting steps must be an integer, not 'x'"):
        Toy.from_dict({"steps": "x"})
    with pytest.raises(UserError, match="toy steps must be >= 1"):
        Toy.from_dict({"steps": 0})
    assert Toy.from_dict({"targets": ["z"]}).targets == ("z",)


def test_the_hash_is_sorted_json_less_the_excluded_settings():
    toy = Toy()
    assert toy.config_hash() == Toy(log_every=1).config_hash()  # excluded: changes no result
    assert toy.config_hash() != Toy(steps=11).config_hash()
    assert toy.config_hash() == Toy(targets=["x", "y"]).config_hash()  # a list from JSON is the tuple
    import hashlib

    data = {"method": "toy", "steps": 10, "lr": 1e-3, "size": None, "fast": False, "kind": "a", "targets": ["x", "y"]}
    assert toy.config_hash() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert Toy.from_dict(json.loads(json.dumps(toy.to_dict()))) == toy  # to_dict round-trips through JSON
    assert Toy.help()["lr"] == "learning rate"


def test_stage_hashes_are_the_ones_stored_runs_carry():
    """Runs are keyed by these hashes (a rerun with the same settings is a no-op): they must never move."""
    assert DPOConfig().config_hash() == "e0564b7bcde5a150"
    assert DPOConfig(ai_feedback_sets=3, since_parent=False, targets=["to_q"]).config_hash() == "4fe1916b26d89cf0"
    # the defaults before the 16-prompt guard, and before the guard's patience
    old_guard = {"drift_prompts": 8, "drift_max_follow_drop": 0.25, "drift_patience": 0}
    assert DDPOConfig(**old_guard).config_hash() == "1885803caf1f311e"
    assert DDPOConfig(reward_path="x", drift_max_pixel=None, **old_guard).config_hash() == "43008e8cd48d128e"
    assert DDPOConfig(drift_patience=0).config_hash() == "6fe38817523d9502"
    assert DDPOConfig().config_hash() == "625c0a9bb8b39350"  # new defaults, new runs: never a no-op of an old one
    assert RewardConfig().config_hash() == "59a10633e4240f70"
    assert RewardConfig(include_ties=True, cv_folds=0).config_hash() == "833bc0acde227ca9"
    assert RewardConfig(cv_folds=0).config_hash() == RewardConfig().config_hash()


# ---------------------------------------------------------------- the one parser

def test_flags_have_kebab_names_help_and_defaults():
    parser = argparse.ArgumentParser()
    add_flags(parser, Toy, {"steps": 99})
    text = parser.format_help()
    for words in ("--steps N", "optimizer steps (default 99)", "--log-every N", "--fast, --no-fast", "--lr X",
                  "--size N|none", "--kind {a,b}", "--targets TEXT [TEXT ...]", "(default x y)", "--config FILE.yaml"):
        assert words in text, words


def test_flags_fill_every_kind_of_setting():
    cfg = _parse("--steps", "3", "--lr", "0.5", "--size", "64", "--fast", "--kind", "b", "--targets", "p", "q")
    assert cfg == Toy(steps=3, lr=0.5, size=64, fast=True, kind="b", targets=("p", "q"))
    assert _parse("--size", "none").size is None and _parse("--no-fast").fast is False
    assert _parse() == Toy()


def test_precedence_class_then_command_then_file_then_flags(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("steps: 7\nlr: 1e-5\nfast: true\ntargets: [f]\n")
    assert _parse(defaults={"steps": 50, "size": 32}) == Toy(steps=50, size=32)
    from_file = _parse("--config", str(run), defaults={"steps": 50, "size": 32})
    assert from_file == Toy(steps=7, lr=1e-5, fast=True, targets=("f",), size=32)
    both = _parse("--config", str(run), "--steps", "2", "--no-fast", defaults={"steps": 50})
    assert both == Toy(steps=2, lr=1e-5, fast=False, targets=("f",))
    assert _parse("--config", '{"kind": "b"}', "--lr", "0.1") == Toy(kind="b", lr=0.1)  # a JSON object too
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"steps": 7, "lr": 1e-5, "fast": True, "targets": ["f"]}))
    assert _parse("--config", str(as_json)) == _parse("--config", str(run))


def test_a_bad_config_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    for argv, words in [(["--config", str(bad)], "unknown toy setting(s): stepz (did you mean stepz -> steps?)"),
                        (["--config", str(tmp_path / "missing.yaml")], "cannot be read"),
                        (["--config", "[1]"], "JSON object"),
                        (["--steps", "0"], "toy steps must be >= 1")]:
        with pytest.raises(UserError) as e:
            _parse(*argv)
        assert words in str(e.value) and "\n" not in str(e.value), (argv, str(e.value))


def test_argparse_refuses_a_wrong_flag_value_while_parsing():
    parser = argparse.ArgumentParser()
    add_flags(parser, Toy)
    for argv in (["--steps", "x"], ["--kind", "c"], ["--size", "big"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_stage_commands_take_flags_and_a_config_file(tmp_path):
    from pickloop.cli import build_parser

    run = tmp_path / "loop.yaml"
    run.write_text("labels: 60\nrounds: 3\nopen_attributes: [size]\n")
    parser = build_parser()
    from pickloop.loop.commands import DEMO

    args = parser.parse_args(["demo", "--config", str(run), "--rounds", "1"])
    assert config_from_args(LoopConfig, args) == LoopConfig(**{**DEMO, "labels": 60, "rounds": 1,
                                                               "open_attributes": ("size",)})
    args = parser.parse_args(["bench", "loop", "--method", "dpo", "--open-attributes", "color", "shape"])
    assert config_from_args(LoopConfig, args) == LoopConfig(method="dpo", open_attributes=("color", "shape"))
    (tmp_path / "reward.yaml").write_text("epochs: 40\ninclude_ties: true\nlr: 1e-2\n")
    args = parser.parse_args(["reward", "train", "--config", str(tmp_path / "reward.yaml"), "--no-include-ties",
                              "--heldout-share", "0.3"])
    assert config_from_args(RewardConfig, args) == RewardConfig(epochs=40, lr=1e-2, heldout_share=0.3)


def test_finetune_run_takes_each_methods_flags_over_its_config_file(tmp_path):
    from finetune.commands import run_overrides
    from pickloop.cli import build_parser

    parser = build_parser()
    (tmp_path / "dpo.yaml").write_text("steps: 500\nlr: 1e-5\n")
    args = parser.parse_args(["finetune", "run", "--method", "dpo", "--config", str(tmp_path / "dpo.yaml"),
                              "--dpo-steps", "3", "--dpo-targets", "to_q", "--no-dpo-since-parent"])
    assert run_overrides(args) == {"steps": 3, "lr": 1e-5, "targets": ("to_q",), "since_parent": False}
    (tmp_path / "auto.yaml").write_text("dpo:\n  steps: 10\nddpo:\n  epochs: 2\n  lr: 0.01\n")
    args = parser.parse_args(["finetune", "run", "--config", str(tmp_path / "auto.yaml"), "--ddpo-epochs", "5",
                              "--dpo-beta", "5000"])
    assert run_overrides(args) == {"dpo": {"steps": 10, "beta": 5000.0}, "ddpo": {"epochs": 5, "lr": 0.01}}
    assert run_overrides(parser.parse_args(["finetune", "run", "--method", "ddpo"])) == {}
    with pytest.raises(UserError, match="--ddpo-\\* flags \\(epochs\\) set ddpo settings, but --method is dpo"):
        run_overrides(parser.parse_args(["finetune", "run", "--method", "dpo", "--ddpo-epochs", "2"]))


def test_a_field_may_keep_its_older_flag_and_a_path_from_a_file_is_a_path(tmp_path):
    from pathlib import Path

    from pickloop.cli import build_parser
    from pickloop.shapes.config import ShapesBenchConfig

    (tmp_path / "b.yaml").write_text("clip_dir: some/clip\nn: 5\n")
    args = build_parser().parse_args(["bench", "shapes", "--pipeline", "p/q", "--config", str(tmp_path / "b.yaml")])
    cfg = config_from_args(ShapesBenchConfig, args)
    assert cfg == ShapesBenchConfig(n=5, pipeline_dir=Path("p/q"), clip_dir=Path("some/clip"))
    with pytest.raises(UserError, match="shapes bench setting clip_dir must be a path or null, not 3"):
        ShapesBenchConfig.from_dict({"clip_dir": 3})


def test_the_shapes_recipe_settings_are_on_the_base_too():
    from pickloop.shapes.config import RecipeConfig, UnetConfig

    with pytest.raises(UserError, match="shapes stage setting pool_size must be an integer, not 'x'"):
        UnetConfig.from_dict({"pool_size": "x"})
    with pytest.raises(UserError, match="batch_size >= 1"):
        UnetConfig(batch_size=0)
    assert RecipeConfig(work="w").work.name == "w" and "pool_size" in UnetConfig.help()

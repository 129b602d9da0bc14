"""Bad-config corpus: every typed config (DPO, DDPO, reward, loop) refuses a wrong type or value in one
line naming the setting, through the one shared check (``pickloop.typed_config``); good values pass."""
from __future__ import annotations

import json
import math

import pytest

from finetune.ddpo.config import DDPOConfig
from finetune.dpo.config import DPOConfig
from pickloop.errors import UserError
from pickloop.loop.config import LoopConfig
from pickloop.typed_config import config_object
from reward.config import RewardConfig

# (config class, settings as JSON would give them, words the one line must hold)
BAD = [
    (DPOConfig, {"steps": "abc"}, "dpo setting steps must be an integer, not 'abc'"),
    (DPOConfig, {"steps": json.loads("1e999")}, "steps must be an integer, not inf"),
    (DPOConfig, {"steps": 2.0}, "steps must be an integer"),
    (DPOConfig, {"steps": True}, "steps must be an integer"),
    (DPOConfig, {"rank": 1.5}, "rank must be an integer, not 1.5"),
    (DPOConfig, {"rank": 0}, "rank, steps, batch_size and grad_accum must be >= 1"),
    (DPOConfig, {"targets": 5}, "targets must be a list of text, not 5"),
    (DPOConfig, {"targets": "to_q"}, "targets must be a list of text"),
    (DPOConfig, {"targets": ["to_q", 3]}, "targets must be a list of text"),
    (DPOConfig, {"targets": []}, "targets must name at least one module"),
    (DPOConfig, {"lr": "fast"}, "lr must be a finite number, not 'fast'"),
    (DPOConfig, {"lr": math.nan}, "lr must be a finite number"),
    (DPOConfig, {"lr": 10 ** 400}, "lr must be a finite number"),
    (DPOConfig, {"lr": -1}, "lr and beta must be > 0"),
    (DPOConfig, {"alpha": "x"}, "alpha must be a finite number or null"),
    (DPOConfig, {"alpha": 0}, "alpha must be > 0 or null"),
    (DPOConfig, {"resolution": 64.5}, "resolution must be an integer or null"),
    (DPOConfig, {"gradient_checkpointing": "yes"}, "gradient_checkpointing must be true or false"),
    (DPOConfig, {"mixed_precision": 16}, "mixed_precision must be text"),
    (DPOConfig, {"warmup_steps": -1}, "warmup_steps, weight_decay and max_grad_norm must be >= 0"),
    (DDPOConfig, {"epochs": "x"}, "ddpo setting epochs must be an integer, not 'x'"),
    (DDPOConfig, {"guidance": "high"}, "guidance must be a finite number"),
    (DDPOConfig, {"reward_path": 3}, "reward_path must be text or null"),
    (DDPOConfig, {"drift_max_pixel": math.inf}, "drift_max_pixel must be a finite number or null"),
    (DDPOConfig, {"epochs": 0}, "epochs must be >= 1"),
    (RewardConfig, {"epochs": "many"}, "reward setting epochs must be an integer"),
    (RewardConfig, {"include_ties": 1}, "include_ties must be true or false"),
    (RewardConfig, {"dropout": 1.0}, "dropout must be in [0, 1)"),
    (LoopConfig, {"labels": "400"}, "loop setting labels must be an integer"),
    (LoopConfig, {"open_attributes": "color"}, "open_attributes must be a list of text"),
    (LoopConfig, {"taste": "nosuch"}, "unknown taste 'nosuch'"),
    (LoopConfig, {"taste": "missing.py:f"}, "missing.py' not found"),
]


@pytest.mark.parametrize("cls,values,words", BAD, ids=[f"{c.__name__}-{next(iter(v))}-{i}" for i, (c, v, _) in
                                                      enumerate(BAD)])
def test_bad_setting_is_one_line_naming_it(cls, values, words):
    with pytest.raises(UserError) as e:
        cls(**values)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_good_values_pass_and_keep_their_hash():
    assert DPOConfig(lr=1, beta=5000, targets=["to_q", "to_v"], alpha=None, resolution=None).targets == ("to_q", "to_v")
    assert DPOConfig(targets=list(DPOConfig().targets)).config_hash() == DPOConfig().config_hash()
    assert DDPOConfig(drift_max_pixel=None, guidance=5).guidance == 5
    assert RewardConfig(lr=1).lr == 1 and LoopConfig(open_attributes=["size"]).open_attributes == ("size",)
    assert DPOConfig.from_dict(json.loads('{"steps": 3, "lr": 0.001}')).steps == 3


def test_config_from_a_yaml_file_equals_the_same_json(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("# a run of my own\nsteps: 500\nlr: 1e-5   # a number, as in JSON (PyYAML alone reads text)\n"
                   "beta: 5000\ntargets: [to_q, to_v]\n")
    as_json = config_object('{"steps": 500, "lr": 1e-5, "beta": 5000, "targets": ["to_q", "to_v"]}')
    assert config_object(str(run)) == as_json
    assert DPOConfig.from_dict(config_object(str(run))).config_hash() == DPOConfig.from_dict(as_json).config_hash()
    (tmp_path / "auto.yml").write_text("dpo:\n  steps: 10\nddpo:\n  epochs: 2\n")
    assert config_object(str(tmp_path / "auto.yml")) == {"dpo": {"steps": 10}, "ddpo": {"epochs": 2}}


@pytest.mark.parametrize("text,words", [
    ("- 1\n- 2\n", "must hold a mapping"),
    ("steps: [1\n", "is not valid YAML"),
    ("", "must hold a mapping"),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=words) as e:
        config_object(str(f))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="cannot be read"):
        config_object(str(tmp_path / "missing.yaml"))

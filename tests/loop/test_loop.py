"""A two-round loop on the embedded model with a handful of labels leaves every stage's rows and files."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlmodel import func, select

from pickloop.context import Context
from pickloop.db import read_session
from pickloop.loop.config import LoopConfig
from pickloop.loop.report import write_report
from pickloop.loop.run import run_loop
from pickloop.schema import Judgement, ModelVersion, RewardModelRow
from pickloop.errors import UserError

LOAD_IN_PLAIN_DIFFUSERS = """
import sys, torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging
logging.set_verbosity_error()
base, lora = sys.argv[1], sys.argv[2]
pipe = StableDiffusionPipeline.from_pretrained(base, use_safetensors=True, safety_checker=None)
pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", use_safetensors=True)
assert "pickloop" not in sys.modules
print(len(pipe.get_active_adapters()))
"""


@pytest.mark.slow
def test_two_round_loop_leaves_every_stage_behind(ctx, tmp_path):
    # a gate that passes every version (win rate >= 0, any fall in following): each round must promote what it
    # trained, stack the next round on it, and measure it
    ctx = Context(settings=ctx.settings.model_copy(update={"promote_max_follow_drop": 1.0}))
    taste = tmp_path / "my_taste.py"  # a taste of one's own, from a file: prefers brighter images
    taste.write_text("import numpy as np\n"
                     "def bright(image):\n"
                     "    return float(np.asarray(image.convert('L'), dtype=float).mean())\n")
    config = LoopConfig(taste=f"{taste}:bright", method="dpo", rater_tie_margin=0.0, labels=16, rounds=2, candidates=3,
                        train_prompts=8, eval_prompts=3,
                        eval_seeds=1, gate_seeds=1, dpo_steps=6, gate_win_rate=0.0, dpo_ai_feedback_sets=2)
    result = run_loop(ctx=ctx, config=config, progress=False, log=lambda *_: None)
    assert [r["round"] for r in result.rounds] == [1, 2]
    with read_session(ctx.engine) as s:
        assert s.exec(select(func.count()).select_from(Judgement)).one() == 16
        assert s.exec(select(func.count()).select_from(RewardModelRow)).one() == 2
        versions = s.exec(select(ModelVersion)).all()
    base_row = next(v for v in versions if v.method == "base")
    tuned = [v for v in versions if v.method == "dpo"]
    assert len(tuned) == 2 and all(v.lora_sha256 and v.data_snapshot for v in tuned)
    # round 1 trains on the base, round 2 on round 1's version; the last one promoted is the only one in use
    assert [(v.status, v.parent_id) for v in [base_row, *tuned]] == [
        ("retired", None), ("retired", base_row.id), ("promoted", tuned[0].id)]
    assert [r["finetune"][0]["status"] for r in result.rounds] == ["promoted", "promoted"]
    assert [r["version"] for r in result.rounds] == [v.name for v in tuned]  # each round measures its version
    # the promoted LoRA is what draws the final figures: not one held-out image is the base's
    assert result.final.prompts == result.base.prompts and result.final.seeds == result.base.seeds
    assert all(a.tobytes() != b.tobytes() for a, b in zip(result.final.images, result.base.images))
    # each round's DPO also trained on sets the round's reward model ranked
    assert [v.metrics["ai_pairs"] for v in tuned] == [2, 2] and all(v.name.endswith(("-rm1", "-rm2")) for v in tuned)
    report = write_report(result, tmp_path / "report")
    for name in ("report.md", "curves.png", "grid.png", "figures.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    figures = json.loads((tmp_path / "report" / "figures.json").read_text())
    assert 0.0 <= figures["summary"]["win_rate"] <= 1.0 and figures["summary"]["labels"] == 16
    text = report.read_text()
    assert "oracle win rate" in text
    # the final round in detail: following per attribute, and win rate and following per held-out prompt
    detail = result.rounds[-1]["detail"]
    assert set(detail["by_attribute"]) and all(0 <= x <= 1 for pair in detail["by_attribute"].values() for x in pair)
    assert sorted(r[0] for r in detail["by_prompt"]) == sorted(set(result.base.prompts))
    drops = [r[3] - r[2] for r in detail["by_prompt"]]
    assert drops == sorted(drops)  # worst-followed first
    assert all(f"| {r[0]} |" in text for r in detail["by_prompt"])
    mean_win = sum(r[1] for r in detail["by_prompt"]) / len(detail["by_prompt"])
    assert abs(mean_win - result.rounds[-1]["win_rate"]) < 1e-9  # one seed each here: the same average
    from pickloop.context import resolve_model_ref

    out = subprocess.run([sys.executable, "-c", LOAD_IN_PLAIN_DIFFUSERS, resolve_model_ref(None), tuned[-1].lora_path],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"


@pytest.mark.slow
def test_default_loop_decides_from_its_data_and_reports_why(ctx, tmp_path):
    """With the defaults (``method=auto``) a reward model validated on a dozen pairs is not trusted: the
    round trains DPO on the human picks alone, the judge's prompt following decides, and the report says so."""
    config = LoopConfig(taste="large", labels=12, rounds=1, candidates=3, train_prompts=6, eval_prompts=2,
                        eval_seeds=1, gate_seeds=2, dpo_steps=4)
    assert config.method == "auto"
    lines: list[str] = []
    result = run_loop(ctx=ctx, config=config, progress=False, log=lines.append)
    (row,) = result.rounds
    assert row["trust"]["trusted"] is False and "pairs only" in row["trust"]["reason"]
    assert sum("not trusting the reward model" in x for x in lines) == 1
    (step,) = row["finetune"]
    assert step["method"] == "dpo" and step["gate"]["gate_judged_win"] is False
    assert step["status"] in ("promoted", "refused") and step["gate"]["gate_follow_new"] is not None
    with read_session(ctx.engine) as s:
        (v,) = s.exec(select(ModelVersion).where(ModelVersion.method == "dpo")).all()
    assert v.metrics["ai_pairs"] == 0 and (v.status == "promoted") == (step["status"] == "promoted")
    assert set(row["stage_s"]) == {"label", "reward", "finetune", "measure"} and all(
        x >= 0 for x in row["stage_s"].values())
    assert set(row["stage_cpu_s"]) == set(row["stage_s"]) and result.summary["cpu_s"] > 0
    text = write_report(result, tmp_path / "report").read_text()
    assert "did not trust the reward model" in text and f"| 1 | dpo | {v.name} | {step['status']} |" in text
    assert "wall time by stage: label" in text and "s CPU)" in text


def test_bad_loop_settings_are_one_line():
    with pytest.raises(UserError, match="method"):
        LoopConfig(method="ppo")
    with pytest.raises(UserError, match="attribute"):
        LoopConfig(open_attributes=("colour",))
    with pytest.raises(UserError, match="2-4"):
        LoopConfig(candidates=5)
    with pytest.raises(UserError, match="ai-feedback"):
        LoopConfig(dpo_ai_feedback_sets=-1)
    with pytest.raises(UserError, match="ai-feedback"):
        LoopConfig(dpo_ai_feedback_candidates=1)

"""Training: on simulated labels without the store, and end to end from the store and the CLI."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from pickloop.cli import main
from pickloop.errors import UserError
from reward.evaluate import evaluate_model, learning_curve, pairwise_metrics, save_learning_curve
from reward.model import RewardModel
from reward.train import RewardConfig, train_on_pairs

FAST = dict(epochs=60, patience=10, heldout_share=0.3)


def test_short_training_on_simulated_labels_beats_chance(clip_dir, make_pairs):
    from reward.data import split_indices

    pairs = make_pairs(24, 6, seed=0)
    config = RewardConfig(backbone=clip_dir, include_ties=True, **FAST)  # held-out figures count tie pairs
    model, m = train_on_pairs(pairs, config=config, progress=False)
    assert m["train_prompts"] + m["heldout_prompts"] == 24 and m["heldout_pairs"] > 20
    _, held_idx = split_indices([p.prompt for p in pairs], config.heldout_share)
    held = [pairs[i] for i in held_idx]
    assert evaluate_model(model, held)["accuracy"] == pytest.approx(m["heldout_acc"], abs=1e-6)
    assert m["heldout_acc"] > 0.75
    assert evaluate_model(model.fresh_head(seed=1), held)["accuracy"] < m["heldout_acc"]


def test_empty_and_one_prompt_label_sets_are_one_clear_line(clip_dir, make_pairs):
    with pytest.raises(UserError, match="no preference pairs"):
        train_on_pairs([], config=RewardConfig(backbone=clip_dir))
    one = [p for p in make_pairs(3, 4) if p.prompt == make_pairs(3, 4)[0].prompt]
    with pytest.raises(UserError, match="one prompt"):
        train_on_pairs(one, config=RewardConfig(backbone=clip_dir))


def test_metrics_exclude_ties_from_accuracy_and_calibration():
    import torch

    r_a = torch.tensor([2.0, -1.0, 0.0, 5.0])
    r_b = torch.tensor([0.0, 1.0, 0.0, 0.0])
    label = torch.tensor([1.0, 1.0, 0.5, 0.5])
    m = pairwise_metrics(r_a, r_b, label)
    assert m["accuracy"] == 0.5 and m["ties"] == 2 and m["pairs"] == 4
    assert 0.0 <= m["ece"] <= 1.0


@pytest.mark.slow
def test_train_from_store_registers_snapshot_and_cli_reports(home, ctx, clip_dir, make_sets, write_labels,
                                                             tmp_path, monkeypatch, capsys):
    from sqlmodel import select

    from pickloop.db import read_session
    from pickloop.schema import RewardModelRow

    # No labels yet: one line, exit 2, before any model is loaded.
    assert main(["reward", "train", "--backbone", clip_dir]) == 2
    assert "no preference pairs" in capsys.readouterr().err

    sets = make_sets(20, 4, seed=2, candidates=3)
    sets[0] = (sets[0][0], sets[0][1], "none")  # none good and skip give no pair
    sets[1] = (sets[1][0], sets[1][1], "skip")
    ids = write_labels(sets)
    args = ["reward", "train", "--backbone", clip_dir, "--epochs", "40", "--patience", "8", "--heldout-share", "0.3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"up to judgement {max(ids)}" in out
    with read_session(ctx.engine) as s:
        row = s.exec(select(RewardModelRow)).one()
    assert row.data_snapshot == max(ids) and row.backbone == clip_dir
    assert row.path.endswith(f"reward/{row.id}") and len(row.sha256) == 64
    metrics = json.loads((home / "reward" / str(row.id) / "metrics.json").read_text())
    picks = sum(isinstance(choice, int) for _, _, choice in sets)  # ties are left out by default
    assert 0 < picks < 78 and metrics["labels"] == picks and metrics["data_snapshot"] == max(ids)
    assert row.metrics["heldout_acc"] == metrics["heldout_acc"] > 0.6

    png = tmp_path / "curve.png"
    assert main(["reward", "eval", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "expected calibration error" in out
    assert Image.open(png).format == "PNG"

    monkeypatch.chdir(tmp_path)
    sets[2][1][0].save(tmp_path / "a.png")
    sets[2][1][1].save(tmp_path / "b.png")
    assert main(["reward", "score", "--prompt", sets[2][0], "a.png", "b.png"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[1] for ln in lines] == ["a.png", "b.png"]
    expected = RewardModel.load(row.path).score(sets[2][0], sets[2][1][:2]).tolist()
    assert [float(ln.split("\t")[0]) for ln in lines] == pytest.approx(expected, abs=1e-4)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    capsys.readouterr()
    for bad in (["missing.png"], ["bad.png"], ["../a.png"]):
        assert main(["reward", "score", "--prompt", "x", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pickloop: error:") and "\n" not in err


def test_learning_curve_png(clip_dir, make_pairs, tmp_path):
    from reward.data import featurize, split_indices

    pairs = make_pairs(16, 5, seed=3)
    model = RewardModel.create(clip_dir)
    data = featurize(model, pairs)
    train_idx, held_idx = split_indices(data.prompts, 0.3)
    train = data.subset(train_idx)
    counts = [5, 20, len(set(train.group.tolist()))]
    curve = learning_curve(model, train, data.subset(held_idx), RewardConfig(backbone=clip_dir, **FAST), counts=counts)
    assert [c["labels"] for c in curve][:2] == [5, 20] and all(0 <= c["accuracy"] <= 1 for c in curve)
    path = save_learning_curve(curve, tmp_path / "lc.png", reference=0.9)
    assert Image.open(path).size[0] > 100


def test_lora_training_moves_only_adapters_and_head(clip_dir, make_pairs):
    import torch

    pairs = make_pairs(6, 3, seed=4)
    config = RewardConfig(backbone=clip_dir, lora_rank=2, epochs=2, patience=5, heldout_share=0.3, lora_lr=1e-2)
    model = RewardModel.create(clip_dir, **config.model_kwargs())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model, m = train_on_pairs(pairs, config=config, model=model, progress=False)
    after = model.backbone.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all("lora_" in k for k in moved)
    assert m["epochs_run"] == 2

"""Files pickloop wrote itself and reads back: a final LoRA write killed half-way, checkpoints and reward
models changed after they were written. Nothing half-written stays; nothing changed is read."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from finetune import checkpoint as ckpt
from finetune import lora as lora_io
from pickloop.cli import main
from pickloop.errors import UserError
from tests.badinput.conftest import one_line_naming


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_killed_final_write_leaves_nothing_at_the_next_run(ctx, capsys):
    loras = ctx.settings.lora_dir
    dead = _dead_pid()
    killed = loras / f".tmp-dpo-s3-abc-{dead}"  # what a run killed inside save_lora leaves
    killed.mkdir(parents=True)
    (killed / lora_io.LORA_WEIGHT_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    moved_aside = loras / f".tmp-dpo-s2-xyz-{dead}-old"  # killed between moving the old folder aside and
    moved_aside.mkdir()  # renaming the new one in: the old one comes back
    (moved_aside / "manifest.json").write_text("{}")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        writing = loras / f".tmp-dpo-s4-def-{live.pid}"  # another process still writing: left alone
        writing.mkdir()
        assert main(["finetune", "run", "--min-new-labels", "5"]) == 0  # nothing to train; the sweep still runs
        assert "nothing to do" in capsys.readouterr().out
        assert not killed.exists() and writing.exists()
        assert not moved_aside.exists() and (loras / "dpo-s2-xyz" / "manifest.json").is_file()
    finally:
        live.kill()
        live.wait()


def test_reward_model_save_replaces_by_rename_and_cleans_after_a_killed_one(ctx):
    from reward.model import RewardModel

    folder = ctx.home / "reward" / "1"
    killed = folder.parent / f".tmp-1-{_dead_pid()}"  # a save killed half-way
    killed.mkdir(parents=True)
    model = RewardModel.create()
    model.save(folder)
    model.save(folder, {"again": 1})
    assert sorted(p.name for p in folder.parent.iterdir()) == ["1"]
    assert RewardModel.load(folder).metrics == {"again": 1}


def test_final_write_replaces_by_rename(shapes_unet, tmp_path):
    from copy import deepcopy

    unet = deepcopy(shapes_unet)
    lora_io.add_lora(unet, rank=2)
    out = tmp_path / "loras" / "v"
    first = lora_io.save_lora_atomic(unet, out)
    with torch.no_grad():
        for p in lora_io.lora_parameters(unet):
            p.add_(0.1)
    second = lora_io.save_lora_atomic(unet, out)
    assert first != second and lora_io.file_sha256(out / lora_io.LORA_WEIGHT_NAME) == second
    assert sorted(p.name for p in out.parent.iterdir()) == ["v"]  # no temporary or old folder left beside it
    assert lora_io.load_lora_state(out, expected_sha256=second)


@pytest.fixture
def checkpoint(shapes_unet, tmp_path):
    from copy import deepcopy

    unet = deepcopy(shapes_unet)
    lora_io.add_lora(unet, rank=2)
    opt = torch.optim.AdamW(lora_io.lora_parameters(unet), lr=1e-3)
    path = ckpt.save_checkpoint(tmp_path / "run", step=3, unet=unet, optimizer=opt, data_position=12,
                                extra={"parent_sha256": None})
    return path, unet, opt


def test_checkpoint_changed_after_writing_is_never_resumed(checkpoint):
    path, unet, opt = checkpoint
    assert ckpt.load_checkpoint(path, unet=unet, optimizer=opt).step == 3  # the control
    meta = json.loads((path / ckpt.STATE_JSON).read_text())
    meta["step"], meta["extra"]["parent_sha256"] = 99, "0" * 64  # valid JSON, other content
    (path / ckpt.STATE_JSON).write_text(json.dumps(meta))
    for read in (ckpt.checkpoint_extra, lambda p: ckpt.load_checkpoint(p, unet=unet, optimizer=opt)):
        with pytest.raises(UserError, match="is corrupted: its sha256") as e:
            read(path)
        one_line_naming(str(e.value), path / ckpt.STATE_JSON)
    assert ckpt.latest_complete_checkpoint(path.parent) is None


def test_checkpoint_tensors_changed_after_writing_are_never_restored(checkpoint):
    path, unet, opt = checkpoint
    before = lora_io.lora_tensors(unet)
    tensors, meta = lora_io.read_safetensors(path / ckpt.STATE_TENSORS)
    from safetensors.torch import save_file

    save_file({k: v * 3 if k.startswith("lora.") else v for k, v in tensors.items()}, str(path / ckpt.STATE_TENSORS))
    with pytest.raises(UserError, match="is corrupted: its sha256") as e:
        ckpt.load_checkpoint(path, unet=unet, optimizer=opt)
    one_line_naming(str(e.value), path / ckpt.STATE_TENSORS)
    after = lora_io.lora_tensors(unet)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing restored from it


def test_registered_reward_model_changed_after_training_is_never_loaded(ctx, capsys):
    from pickloop.db import write_session
    from pickloop.schema import RewardModelRow
    from reward.model import RewardModel, WEIGHTS_FILE
    from reward.registry import load_reward_model, weights_sha256

    folder = RewardModel.create().save(ctx.home / "reward" / "1")
    with write_session(ctx.engine) as s:
        s.add(RewardModelRow(path=str(folder.resolve()), sha256=weights_sha256(folder), backbone="embedded:shapes-clip",
                             data_snapshot=0))
    assert load_reward_model(ctx=ctx) is not None  # the control
    tensors, _ = lora_io.read_safetensors(folder / WEIGHTS_FILE)
    from safetensors.torch import save_file

    save_file({k: v * 3 for k, v in tensors.items()}, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    for ref in ("latest", str(folder)):  # by the registry, or by its folder: the recorded sum is found either way
        with pytest.raises(UserError, match="reward model file .* is corrupted: its sha256") as e:
            load_reward_model(ctx=ctx, ref=ref)
        one_line_naming(str(e.value), folder / WEIGHTS_FILE)


def test_shapes_training_checkpoint_is_checked_against_its_header(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pickloop.shapes.train import load_checkpoint, save_checkpoint

    path = tmp_path / "unet.ckpt.safetensors"
    tensors = {"w": torch.arange(12.0).reshape(3, 4), "opt.0.step": torch.tensor(5.0)}
    save_checkpoint(path, tensors, {"step": 5})
    back, meta = load_checkpoint(path)
    assert meta == {"step": 5} and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    save_file({**tensors, "w": tensors["w"] * 3}, str(path), metadata=header)  # other weights, same header
    with pytest.raises(UserError, match="is corrupted: its contents do not match the sha256") as e:
        load_checkpoint(path)
    one_line_naming(str(e.value), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupted"):
        load_checkpoint(path)

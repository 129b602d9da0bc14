"""Damaged LoRAs never serve, train or get promoted: each is one line naming the file, at every reader."""
from __future__ import annotations

import re

import pytest

from finetune import lora as lora_io
from generator.pipeline import load_pipeline
from pickloop.cli import main
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.store import find_version, promote
from tests.badinput.conftest import one_line_naming, register_lora
from tests.badinput.corpus import ALL_DAMAGES, LORA_DAMAGES, damaged_copy


@pytest.mark.parametrize("damage", sorted(ALL_DAMAGES))
def test_damaged_lora_never_serves(damage, good_lora, ctx, tmp_path, caplog, capfd):
    folder, recorded = damaged_copy(*good_lora, damage, tmp_path / damage)
    register_lora(ctx, folder, recorded)
    with pytest.raises(UserError, match=ALL_DAMAGES[damage][1]) as e:
        load_pipeline(lora="v1", ctx=ctx)
    one_line_naming(str(e.value), folder)
    logged = caplog.text + capfd.readouterr().err
    assert "mismatch" not in logged and "Traceback" not in logged  # no pages of size-mismatch logs first
    if damage in LORA_DAMAGES:  # the file alone shows it: refused as a folder too, whatever the manifest says
        with pytest.raises(UserError, match="corrupt|non-finite|manifest|rank|header|not a LoRA weight|pickle"):
            load_pipeline(lora=str(folder))


@pytest.mark.parametrize("damage", sorted(ALL_DAMAGES))
def test_damaged_parent_lora_never_trains(damage, good_lora, shapes_unet, tmp_path, caplog, capfd):
    folder, recorded = damaged_copy(*good_lora, damage, tmp_path / damage)
    parent = lora_io.ParentLora("v1", str(folder), recorded)
    with pytest.raises(UserError, match=ALL_DAMAGES[damage][1]) as e:
        lora_io.start_lora(shapes_unet, parent=parent, reference=True)
    one_line_naming(str(e.value), folder)
    assert not getattr(shapes_unet, "peft_config", None)  # refused before anything was added to the U-Net
    assert "mismatch" not in caplog.text + capfd.readouterr().err


@pytest.mark.parametrize("damage", sorted(LORA_DAMAGES))
def test_damaged_lora_is_never_promoted_or_exported(damage, good_lora, ctx, tmp_path, capsys):
    folder, recorded = damaged_copy(*good_lora, damage, tmp_path / damage)
    register_lora(ctx, folder, recorded)
    for argv in (["models", "promote", "v1", "--force"], ["models", "export", "v1", "--out", str(tmp_path / "x")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(LORA_DAMAGES[damage][1], err[0]), err
        one_line_naming(err[0], folder)
    with read_session(ctx.engine) as s:
        assert find_version(session=s, ref="v1").status == "candidate"
    assert not (tmp_path / "x" / lora_io.LORA_WEIGHT_NAME).exists()


def test_good_lora_serves_trains_promotes_and_exports(good_lora, ctx, tmp_path, capsys):
    """The control: the same readers take the undamaged file, so the refusals above are the damage's."""
    from diffusers import UNet2DConditionModel

    from pickloop.shapes.models import default_pipeline_dir

    folder, sha = good_lora
    register_lora(ctx, folder, sha)
    pipe = load_pipeline(lora="v1", ctx=ctx)
    assert pipe.pickloop_info.lora_sha256 == sha
    unet = UNet2DConditionModel.from_pretrained(default_pipeline_dir(), subfolder="unet", use_safetensors=True)
    assert lora_io.start_lora(unet, parent=lora_io.ParentLora("v1", str(folder), sha))["r"] == 4
    assert main(["models", "export", "v1", "--out", str(tmp_path / "x")]) == 0
    assert lora_io.file_sha256(tmp_path / "x" / lora_io.LORA_WEIGHT_NAME) == sha
    assert main(["models", "promote", "v1", "--force"]) == 0
    with read_session(ctx.engine) as s:
        assert find_version(session=s, ref="latest").name == "v1"


@pytest.mark.parametrize("method", ["auto", "dpo", "ddpo"])
def test_damaged_promoted_version_stops_finetune_run_before_any_model_loads(method, good_lora, ctx, tmp_path, capsys):
    folder, recorded = damaged_copy(*good_lora, "flipped-bit", tmp_path / "flipped")
    register_lora(ctx, folder, recorded)
    with write_session(ctx.engine) as s:  # promoted before the damage happened
        promote(session=s, version=find_version(session=s, ref="v1"))
    from tests.finetune.conftest import add_labelled_sets

    add_labelled_sets(ctx, n_sets=1)
    assert main(["finetune", "run", "--method", method]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupted" in err[0] and str(folder) in err[0]
    from sqlmodel import select

    from pickloop.schema import Job

    with read_session(ctx.engine) as s:
        assert s.exec(select(Job)).first() is None  # no run was claimed for a parent that cannot load


def test_queue_worker_draws_no_set_from_a_damaged_promoted_version(good_lora, ctx, tmp_path):
    """The issue's case: a promoted version holding a NaN drew a ready set of four black images."""
    from generator.queue import fill_queue, queue_counts
    from pickloop.store import add_prompts

    folder, recorded = damaged_copy(*good_lora, "nan", tmp_path / "nan")
    register_lora(ctx, folder, recorded)
    with write_session(ctx.engine) as s:
        promote(session=s, version=find_version(session=s, ref="v1"))
        add_prompts(session=s, texts=["a red circle"])
    with pytest.raises(UserError, match="non-finite values") as e:
        fill_queue(ctx=ctx, max_sets=1, progress=False)
    one_line_naming(str(e.value), folder)
    with read_session(ctx.engine) as s:
        assert queue_counts(session=s)["ready"] == 0

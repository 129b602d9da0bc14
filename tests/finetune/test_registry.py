"""Registry: register, promotion gate (win rate, prompt-following), models list/promote/export."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from finetune import lora as lora_io
from finetune import models as fm
from finetune.registry import gate_and_promote, judge_gate, register_version, win_rate
from pickloop.cli import main
from pickloop.db import read_session, write_session
from pickloop.shapes.world import parse_prompt, prompt_pool, render, scene_from_prompt
from pickloop.store import ensure_base_version, find_version


@pytest.fixture
def candidate(labelled, tmp_path):
    """A registered candidate version with a random (non-identity) LoRA on the tiny base."""
    m = fm.load_train_models(str(labelled.base_model))
    lora_io.add_lora(m.unet, rank=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lora_io.lora_parameters(m.unet):
            p.copy_(torch.randn_like(p) * 0.2)
    out = tmp_path / "v"
    sha = lora_io.save_lora(m.unet, out)
    with write_session(labelled.engine) as s:
        parent = ensure_base_version(session=s, base_model=labelled.base_model)
        v = register_version(session=s, base_model=labelled.base_model, parent_id=parent.id, method="dpo",
                             lora_dir=out, lora_sha256=sha, data_snapshot=3, config_hash="abc", metrics={"x": 1.0})
    return v


def test_win_rate_counts_ties_half():
    assert win_rate([1, 2, 3, 0], [0, 2, 4, 0]) == pytest.approx(0.5)


def test_gate_fails_when_prompt_following_drops():
    import random

    prompts = [p for p in prompt_pool("heldout", n=20) if len(parse_prompt(p)["objects"]) == 1][:6]
    good = [render(scene_from_prompt(p, random.Random(i))) for i, p in enumerate(prompts)]
    blank = [Image.new("RGB", (64, 64), (128, 128, 128)) for _ in prompts]
    always_new = lambda ps, ims: [1.0 if im.getpixel((0, 0)) == (128, 128, 128) else 0.0 for im in ims]  # noqa: E731
    result = judge_gate(prompts, blank, good, always_new, min_win_rate=0.5, max_follow_drop=0.02)
    assert result.win_rate == 1.0 and not result.passed and "prompt-following fell" in result.reason
    ok = judge_gate(prompts, good, good, always_new, min_win_rate=0.5, max_follow_drop=0.02)
    assert ok.passed and ok.follow_new == ok.follow_parent


def _followed_renders(n: int) -> tuple[list[str], list[Image.Image]]:
    import random

    from pickloop.shapes.judge import follows

    prompts, images = [], []
    for i, p in enumerate(prompt_pool("heldout", n=400)):
        img = render(scene_from_prompt(p, random.Random(i)))
        if len(parse_prompt(p)["objects"]) == 1 and all(follows(p, img).values()):
            prompts.append(p)
            images.append(img)
            if len(prompts) == n:
                return prompts, images
    raise AssertionError("too few rendered prompts the judge reads right")


def test_follow_check_forgives_a_flip_or_two_but_not_a_clear_drop():
    prompts, good = _followed_renders(40)
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    tie = lambda ps, ims: [0.0] * len(ims)  # noqa: E731

    def gate(broken: int, z: float):
        new = [blank if i < broken else im for i, im in enumerate(good)]
        return judge_gate(prompts, new, good, tie, min_win_rate=0.5, max_follow_drop=0.02, follow_noise_z=z)

    one = gate(1, 1.0)  # 2.5 points on 40 images: one image, within its noise
    assert one.passed and one.follow_new == pytest.approx(0.975) and one.follow_drop_se == pytest.approx(1 / 40)
    assert not gate(1, 0.0).passed  # the plain 2-point rule refuses it
    clear = gate(4, 1.0)  # 10 points: refused whatever the noise
    assert not clear.passed and "prompt-following fell" in clear.reason and "noise" in clear.reason
    assert not gate(40, 1.0).passed


def test_follow_drops_cannot_add_up_over_rounds():
    """Each round within its allowance of the parent, but the line has fallen clearly below the base."""
    prompts, good = _followed_renders(40)
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    tie = lambda ps, ims: [0.0] * len(ims)  # noqa: E731
    parent = [blank if i < 3 else im for i, im in enumerate(good)]  # 3 images lost by earlier rounds
    new = [blank if i < 4 else im for i, im in enumerate(good)]  # this round loses one more

    alone = judge_gate(prompts, new, parent, tie, min_win_rate=0.5, max_follow_drop=0.02)
    assert alone.passed and alone.follow_base is None  # against its parent alone: one flip, within noise
    held = judge_gate(prompts, new, parent, tie, min_win_rate=0.5, max_follow_drop=0.02, base_images=good)
    assert not held.passed and held.follow_base == 1.0 and held.follow_new == pytest.approx(0.9)
    assert "below the base model's 1.000" in held.reason and "fell from" not in held.reason
    assert held.follow_base_drop_se == pytest.approx(2 / 40)  # four flips against the base
    same = judge_gate(prompts, good, parent, tie, min_win_rate=0.5, max_follow_drop=0.02, base_images=good)
    assert same.passed and same.follow_base == same.follow_new == 1.0  # a round that wins following back passes
    one = [blank if i < 1 else im for i, im in enumerate(good)]  # one image (2.5 points) below the base
    assert judge_gate(prompts, one, good, tie, min_win_rate=0.5, max_follow_drop=0.02).passed  # parent: the base
    strict = judge_gate(prompts, one, good, tie, min_win_rate=0.5, max_follow_drop=0.02, base_images=good)
    assert not strict.passed and "noise" not in strict.reason  # against the base, no noise is forgiven
    assert judge_gate(prompts, one, good, tie, min_win_rate=0.5, max_follow_drop=0.02, base_images=good,
                      base_noise_z=1.0).passed


def test_win_rate_must_clear_its_noise():
    prompts, good = _followed_renders(40)
    scores = lambda wins: (lambda ps, ims: [1.0 if i < wins else 0.0 for i in range(len(ims))])  # noqa: E731
    parent = lambda ps, ims: [0.5] * len(ims)  # noqa: E731

    def gate(wins: int, z: float = 1.0):
        new_scorer, calls = scores(wins), []

        def scorer(ps, ims):  # first call scores the new images, second the parent's
            calls.append(1)
            return new_scorer(ps, ims) if len(calls) == 1 else parent(ps, ims)
        return judge_gate(prompts, good, good, scorer, min_win_rate=0.5, max_follow_drop=None, win_noise_z=z)

    noise = gate(22)  # 0.55 on 40 images: about half a standard error above 0.5
    assert not noise.passed and noise.win_rate == pytest.approx(0.55) and "noise" in noise.reason
    assert gate(22, z=0.0).passed  # the plain threshold lets it through
    assert gate(30).passed  # 0.75: clearly better
    assert not gate(10).passed  # clearly worse


def test_failed_gate_keeps_candidate_with_reason_then_passes(labelled, candidate, monkeypatch):
    prompts = ["a red circle on a blue background"]
    monkeypatch.setenv("PICKLOOP_PROMOTE_MIN_WIN_RATE", "0.9")
    monkeypatch.setenv("PICKLOOP_PROMOTE_GATE_STEPS", "2")
    from pickloop.context import Context

    ctx = Context()
    tie = lambda ps, ims: [0.0] * len(ims)  # noqa: E731 - every seed a tie: win rate 0.5
    result = gate_and_promote(ctx, candidate.name, scorer=tie, prompts=prompts, seeds=[1, 2], shapes=False)
    assert not result.passed and result.win_rate == 0.5
    with read_session(ctx.engine) as s:
        v = find_version(session=s, ref=candidate.name)
        assert v.status == "candidate" and "win rate 0.500" in v.reason and v.metrics["gate_win_rate"] == 0.5
    monkeypatch.setenv("PICKLOOP_PROMOTE_MIN_WIN_RATE", "0.5")
    result = gate_and_promote(Context(), candidate.name, scorer=tie, prompts=prompts, seeds=[1, 2], shapes=False)
    assert result.passed
    with read_session(ctx.engine) as s:
        assert find_version(session=s, ref="latest").name == candidate.name


def test_cli_list_export_and_forced_promote(labelled, candidate, tmp_path, capsys):
    assert main(["models", "list"]) == 0
    assert candidate.name in capsys.readouterr().out
    assert main(["models", "export", candidate.name, "--format", "kohya", "--out", str(tmp_path / "k")]) == 0
    kohya, _ = lora_io.read_safetensors(tmp_path / "k" / lora_io.KOHYA_WEIGHT_NAME)
    assert any(k.startswith("lora_unet_") for k in kohya)
    assert main(["models", "export", candidate.name, "--format", "diffusers", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / lora_io.LORA_WEIGHT_NAME).read_bytes() == \
        (candidate.lora_path and open(f"{candidate.lora_path}/{lora_io.LORA_WEIGHT_NAME}", "rb").read())
    assert main(["models", "promote", candidate.name, "--force"]) == 0
    with read_session(labelled.engine) as s:
        assert find_version(session=s, ref="latest").name == candidate.name


def test_export_of_corrupted_lora_is_one_line_exit_2(labelled, candidate, tmp_path, capsys):
    f = tmp_path / "v" / lora_io.LORA_WEIGHT_NAME
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    assert main(["models", "export", candidate.name, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupted" in err[0]


def test_a_fine_tuned_parent_is_gated_against_the_base_too(labelled, candidate):
    """The gate holds following to the base's images: the parent's when the parent is the base, else drawn."""
    from finetune.registry import _DRAWN
    from pickloop.context import Context

    ctx = Context()
    prompts = ["a red circle on a blue background"]
    tie = lambda ps, ims: [0.0] * len(ims)  # noqa: E731
    _DRAWN.clear()
    first = gate_and_promote(ctx, candidate.name, scorer=tie, prompts=prompts, seeds=[1, 2], shapes=True,
                             judge_win=False, promote_if_passed=False)
    assert first.follow_base == first.follow_parent is not None  # its parent is the base itself
    assert len(_DRAWN) == 2  # the candidate's and the base's images, nothing drawn twice
    with write_session(labelled.engine) as s:
        child = register_version(session=s, base_model=labelled.base_model, parent_id=candidate.id, method="ddpo",
                                 lora_dir=candidate.lora_path, lora_sha256=candidate.lora_sha256, data_snapshot=3,
                                 config_hash="abc", metrics={})
    _DRAWN.clear()  # drawn again: the child's images, its parent's and the base's
    second = gate_and_promote(ctx, child.name, scorer=tie, prompts=prompts, seeds=[1, 2], shapes=True,
                              judge_win=False, promote_if_passed=False)
    assert second.follow_base == first.follow_parent and second.follow_new == first.follow_new
    assert second.follow_base_drop_se is not None and len(_DRAWN) == 2  # one LoRA (child = parent), the base
    with read_session(labelled.engine) as s:
        assert find_version(session=s, ref=child.name).metrics["gate_follow_base"] == second.follow_base

"""The Diffusion-DPO loss as a function of its four per-pair errors, pinned so that a flipped sign, a lost
1/2 or swapped arguments fail (a tiny model trains either way, so the other DPO tests cannot tell)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from finetune.dpo import dpo_loss


def check_sign_and_scale(loss_fn) -> None:  # (err_w, err_l, ref_w, ref_l, beta) -> (loss, stats)
    """Asserts what a Diffusion-DPO loss must do; raises AssertionError otherwise."""
    ref = torch.tensor([0.30, 0.30])
    better_on_winner = torch.tensor([0.29, 0.30])  # pair 0: policy denoises the winner 0.01 better; pair 1: same
    loss, stats = loss_fn(better_on_winner, ref.clone(), ref, ref, 1000.0)
    # d = -0.01 and 0, so -beta/2 * d = 5 and 0: the official code's -log sigmoid(-0.5 * beta * d)
    want = torch.tensor([-math.log(1 / (1 + math.exp(-5.0))), math.log(2.0)])
    assert torch.allclose(stats["loss"], want, atol=1e-6), stats["loss"]
    assert math.isclose(float(loss), float(want.mean()), abs_tol=1e-6)
    assert stats["implicit_acc"].tolist() == [1.0, 0.0]
    assert torch.allclose(stats["gap_w"], torch.tensor([-0.01, 0.0])) and torch.allclose(stats["gap_l"], torch.zeros(2))
    # The gradient pushes the winner's error down and the loser's up, never the reverse.
    err_w = torch.tensor([0.31, 0.29], requires_grad=True)
    err_l = torch.tensor([0.30, 0.32], requires_grad=True)
    loss_fn(err_w, err_l, ref, ref, 1000.0)[0].backward()
    assert (err_w.grad > 0).all() and (err_l.grad < 0).all()
    # Worse on the winner than the reference: the loss rises above log 2.
    assert float(loss_fn(torch.tensor([0.31]), torch.tensor([0.30]), torch.tensor([0.30]), torch.tensor([0.30]),
                         1000.0)[0]) > math.log(2.0)


def test_dpo_loss_has_the_papers_sign_and_scale():
    check_sign_and_scale(dpo_loss)


def _flipped(err_w, err_l, ref_w, ref_l, beta, weights=None):  # the bug to catch
    inside = +0.5 * beta * ((err_w - ref_w) - (err_l - ref_l))
    losses = -F.logsigmoid(inside)
    return losses.mean(), {"loss": losses, "implicit_acc": (inside > 0).float(),
                           "gap_w": err_w - ref_w, "gap_l": err_l - ref_l}


def _no_half(err_w, err_l, ref_w, ref_l, beta, weights=None):  # diffusers' convention
    return dpo_loss(err_w, err_l, ref_w, ref_l, 2 * beta, weights)


def _swapped(err_w, err_l, ref_w, ref_l, beta, weights=None):  # winner and loser swapped
    return dpo_loss(err_l, err_w, ref_l, ref_w, beta, weights)


@pytest.mark.parametrize("wrong", [_flipped, _no_half, _swapped])
def test_the_check_catches_a_wrong_loss(wrong):
    with pytest.raises(AssertionError):
        check_sign_and_scale(wrong)


def test_weights_scale_each_pair():
    e = torch.tensor([0.29, 0.31])
    r = torch.full((2,), 0.30)
    plain, stats = dpo_loss(e, r, r, r, 1000.0)
    weighted, _ = dpo_loss(e, r, r, r, 1000.0, torch.tensor([2.0, 0.0]))
    assert math.isclose(float(weighted), float(stats["loss"][0]), rel_tol=1e-6)  # mean of (2 * l0, 0)
    assert float(plain) == pytest.approx(float(stats["loss"].mean()))

"""The Bradley-Terry loss, per-prompt weights and the prompt split: pure functions, no model."""
from __future__ import annotations

import math

import pytest
import torch

from pickloop.errors import UserError
from reward.data import heldout_prompts, prompt_weights, split_indices
from reward.train import bradley_terry_loss


def test_tie_of_equal_scores_costs_log2_and_pulls_scores_together():
    r_a = torch.tensor([0.3], requires_grad=True)
    r_b = torch.tensor([0.3], requires_grad=True)
    loss = bradley_terry_loss(r_a, r_b, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)

    r_a = torch.tensor([2.0], requires_grad=True)
    r_b = torch.tensor([-1.0], requires_grad=True)
    bradley_terry_loss(r_a, r_b, torch.tensor([0.5])).backward()
    # Gradient descent moves against the gradient: the higher score goes down, the lower one up.
    assert r_a.grad.item() > 0 and r_b.grad.item() < 0
    assert r_a.grad.item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item() - 0.5, abs=1e-6)


def test_decided_pair_loss_is_logistic_and_symmetric():
    r_a, r_b = torch.tensor([1.5]), torch.tensor([0.5])
    win = bradley_terry_loss(r_a, r_b, torch.tensor([1.0])).item()
    assert win == pytest.approx(-math.log(torch.sigmoid(torch.tensor(1.0)).item()), abs=1e-6)
    assert bradley_terry_loss(r_b, r_a, torch.tensor([0.0])).item() == pytest.approx(win, abs=1e-6)


def test_each_prompt_counts_once_whatever_its_number_of_pairs():
    prompts = ["p"] * 3 + ["q"]
    w = prompt_weights(prompts)
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    r_a = torch.tensor([0.0, 0.0, 0.0, 2.0])
    r_b = torch.zeros(4)
    label = torch.ones(4)
    per_pair = -torch.log(torch.sigmoid(r_a - r_b))
    expected = (per_pair[:3].mean() + per_pair[3]) / 2  # mean over prompts of each prompt's mean
    assert bradley_terry_loss(r_a, r_b, label, w).item() == pytest.approx(expected.item(), abs=1e-6)
    assert bradley_terry_loss(r_a, r_b, label).item() != pytest.approx(expected.item(), abs=1e-3)


def test_split_is_by_prompt_and_stable_as_labels_grow():
    first = [f"prompt {i}" for i in range(200)]
    held_first = heldout_prompts(first, 0.2)
    grown = first + [f"prompt {i}" for i in range(200, 1000)] + first  # new prompts and repeated labels
    held_grown = heldout_prompts(grown, 0.2)
    assert held_grown & set(first) == held_first  # no old prompt changed side
    assert 0.1 < len(held_grown) / 1000 < 0.3
    train, held = split_indices(grown, 0.2)
    assert sorted(train + held) == list(range(len(grown)))
    assert not {grown[i] for i in train} & {grown[i] for i in held}  # never split by row


def test_split_keeps_both_sides_for_few_prompts():
    train, held = split_indices(["a", "b"], 0.1)
    assert len(train) == 1 and len(held) == 1


@pytest.mark.parametrize("prompts, words", [([], "no preference pairs"), (["same"] * 5, "one prompt")])
def test_empty_or_single_prompt_labels_are_one_clear_line(prompts, words):
    with pytest.raises(UserError, match=words) as e:
        split_indices(prompts, 0.1)
    assert "\n" not in str(e.value)

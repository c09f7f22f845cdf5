"""The pure losses equal hand computations from the METHODS.md formulas on fixed tensors."""
import math

import pytest
import torch

from sgalign.methods.functional import (PICKSCORE_MAX, PICKSCORE_MIN, diffusion_dpo_loss, inpo_target,
                                        inversion_dpo_loss, inversion_step_weights, per_sample_mse,
                                        smoothed_preference, smpo_loss)

MW, ML = torch.tensor([0.5, 0.2]), torch.tensor([0.3, 0.4])
RW, RL = torch.tensor([0.4, 0.3]), torch.tensor([0.35, 0.3])


def nls(z):  # −log σ(z)
    return math.log1p(math.exp(-z))


def test_diffusion_dpo_loss_by_hand():
    out = diffusion_dpo_loss(MW, ML, RW, RL, beta=10.0)
    # pair 0: −(10/2)((0.5−0.3) − (0.4−0.35)) = −0.75; pair 1: −5(−0.2 − 0) = 1.0
    assert out.logits.tolist() == pytest.approx([-0.75, 1.0])
    assert out.loss.tolist() == pytest.approx([nls(-0.75), nls(1.0)])
    assert out.implicit_acc.tolist() == [0.0, 1.0]


def test_smpo_loss_by_hand_and_equal_scores_zero():
    out = smpo_loss(MW, ML, RW, RL, beta=10.0, prob_w=torch.tensor([0.5, 0.75]), gamma=10.0)
    # β_eff = 10·10·(2p−1) = [0, 50]; pair 1 logit −25·(−0.2) = 5
    assert out.logits.tolist() == pytest.approx([0.0, 5.0])
    assert out.loss.tolist() == pytest.approx([math.log(2), nls(5.0)])


def test_smpo_equal_scores_zero_gradient():
    mw = torch.tensor([0.5, 0.2], requires_grad=True)
    ml = torch.tensor([0.3, 0.4], requires_grad=True)
    s = torch.tensor([0.21, 0.19])
    p = smoothed_preference(s, s)
    assert p.tolist() == [0.5, 0.5]
    smpo_loss(mw, ml, RW, RL, 5000.0, p).loss.sum().backward()
    assert torch.count_nonzero(mw.grad) == 0 and torch.count_nonzero(ml.grad) == 0


def test_inversion_dpo_loss_by_hand_plus_sign():
    out = inversion_dpo_loss(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0.2, 0.1, 0.1]]),
                             torch.tensor([1.0, 2.0, 4.0]), beta=6.0)
    # Dʷ = 0.1 + 0.4 + 1.2 = 1.7, Dˡ = 0.2 + 0.2 + 0.4 = 0.8; +(6/2)(0.9)/3 = 0.9
    assert out.logits.item() == pytest.approx(0.9)
    assert out.loss.item() == pytest.approx(nls(0.9))
    assert inversion_step_weights(torch.tensor([0.5, 0.25])).tolist() == [1.0, 2.0]


def test_smoothed_preference_by_hand():
    p = smoothed_preference(torch.tensor([0.25]), torch.tensor([0.2]))
    d = 0.05 / (PICKSCORE_MAX - PICKSCORE_MIN)
    assert p.item() == pytest.approx(math.exp(d) / (math.exp(d) + 1.0), rel=1e-6)
    with pytest.raises(ValueError, match="s_max"):
        smoothed_preference(torch.tensor([0.2]), torch.tensor([0.1]), s_min=1.0, s_max=0.5)


def test_inpo_target_and_mse_by_hand():
    assert inpo_target(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor(0.64)).item() == pytest.approx(2.0)
    x_t = torch.tensor([2.0, 1.0]).view(2, 1, 1, 1)
    tau = inpo_target(x_t, torch.ones(2, 1, 1, 1), torch.tensor([0.64, 0.36]))
    assert tau.flatten().tolist() == pytest.approx([2.0, 0.5])  # (1 − 0.6)/0.8 = 0.5
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert per_sample_mse(pred, torch.zeros_like(pred)).tolist() == [7.5]  # mean over C×H×W

"""Methods end to end on a tiny ε network: providers, per-pair t, faithful switches, gradients, forward counts."""
import copy

import pytest
import torch
from torch import nn

from sgalign.diffusion import (ZEROS, TrajectoryCache, ddim_invert, diffusers020_grid, exact_grid, model_fingerprint,
                               scaled_linear_alphas_cumprod)
from sgalign.methods import MethodContext, PairBatch, available_methods, build_method
from sgalign.methods.functional import diffusion_dpo_loss, per_sample_mse

AC = scaled_linear_alphas_cumprod()


class TinyEps(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.out = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.temb, self.cemb = nn.Linear(1, 8), nn.Linear(1, 8)

    def forward(self, x, t, cond):
        h = self.inp(x) + (self.temb(t.float()[:, None] / 1000) + self.cemb(cond[:, None]))[..., None, None]
        return self.out(torch.nn.functional.silu(h))


def fn(m):
    return lambda x, t, c: m(x, t, c)


def nets(perturb=0.0):
    ref = TinyEps().requires_grad_(False)
    pol = copy.deepcopy(ref).requires_grad_(True)
    if perturb:
        with torch.no_grad():
            for p in pol.parameters():
                p.add_(perturb * torch.randn_like(p))
    return pol, ref


def batch(B=2, seed=0, scores=None):
    g = torch.Generator().manual_seed(seed)
    sw, sl = scores if scores else (torch.rand(B, generator=g), torch.rand(B, generator=g))
    return PairBatch(torch.randn(B, 4, 6, 6, generator=g), torch.randn(B, 4, 6, 6, generator=g),
                     torch.randn(B, generator=g), sw, sl)


def ctx(pol, ref, seed=0, cache=None):  # TinyEps's unconditional branch: a zero conditioning scalar
    return MethodContext(fn(pol), fn(ref), AC, torch.Generator().manual_seed(seed), cache,
                         model_fingerprint(ref) if cache is not None else None, unconditional=ZEROS)


def grads(m):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in m.parameters()])


def test_registry():
    assert available_methods() == ["diffusion-dpo", "inpo", "inversion-dpo", "sft", "smpo"]
    with pytest.raises(KeyError, match="available"):
        build_method("dpo")
    with pytest.raises(TypeError, match="no option"):
        build_method("inpo", gamma=3.0)
    m = build_method("smpo", faithful=True)
    assert m.resolved()["renoise_label"] == "source" and m.resolved()["grid"] == "diffusers-0.20"
    assert build_method("smpo").resolved()["renoise_label"] == "target"
    assert build_method("inpo", faithful=True, eta=0.0).resolved()["eta"] == 0.0  # explicit option wins


def test_diffusion_dpo_provider_and_loss_by_formula():
    pol, ref = nets(0.05)
    b, c = batch(3), ctx(pol, ref)
    m = build_method("diffusion-dpo", beta=100.0)
    p = m.provide(b, c)
    a = AC[p["t"]].view(-1, 1, 1, 1)
    eps = p["target_w"]  # an ε model's target is the noise, the same for winner and loser
    assert torch.equal(p["target_l"], eps)
    assert torch.allclose(p["x_w"], a.sqrt() * b.x0_w + (1 - a).sqrt() * eps)  # each pair its own t
    assert torch.allclose(p["x_l"], a.sqrt() * b.x0_l + (1 - a).sqrt() * eps)  # same ε and t for w, l
    out = m.loss(p, b, c)
    mw, ml = (per_sample_mse(pol(x, p["t"], b.cond), eps) for x in (p["x_w"], p["x_l"]))
    rw, rl = (per_sample_mse(ref(x, p["t"], b.cond), eps) for x in (p["x_w"], p["x_l"]))
    assert out.loss.item() == pytest.approx(diffusion_dpo_loss(mw, ml, rw, rl, 100.0).loss.mean().item(), rel=1e-5)


def test_sft_uses_winners_only():
    pol, ref = nets()
    b, c = batch(2), ctx(pol, ref)
    m = build_method("sft")
    p = m.provide(b, c)
    a = AC[p["t"]].view(-1, 1, 1, 1)
    assert torch.allclose(p["x_t"], a.sqrt() * b.x0_w + (1 - a).sqrt() * p["target"])
    out = m(b, ctx(pol, ref))
    assert out.forwards.as_dict()["policy_grad"] == 1 and out.forwards.no_grad == 0


@pytest.mark.parametrize("faithful", [False, True])
def test_inpo_batch_uses_each_pairs_own_t_unless_faithful(faithful):
    pol, ref = nets()
    b, c = batch(3), ctx(pol, ref)
    m = build_method("inpo", inverter="reference", faithful=faithful, eta=0.0)
    p = m.provide(b, c)
    t = p["t"]
    assert len(set(t.tolist())) == 3
    for i in range(3):
        ti = t[i:i + 1] if not faithful else t[:1]  # official: timesteps[0] drives grid and target
        g = exact_grid(ti, 10) if not faithful else diffusers020_grid(ti, 10, initial_alpha=AC[0])
        x = ddim_invert(b.x0_w[i:i + 1], fn(ref), g, AC, b.cond[i:i + 1]).final
        assert torch.allclose(p["x_w"][i:i + 1], x, atol=1e-5)
        a = AC[ti]
        assert torch.allclose(p["target_w"][i:i + 1], (x - a.sqrt() * b.x0_w[i:i + 1]) / (1 - a).sqrt(), atol=1e-4)


@pytest.mark.parametrize("name", ["inpo", "smpo"])
def test_cached_reference_inversion_equals_uncached_and_is_cheaper(tmp_path, name):
    pol, ref = nets(0.01)
    b = batch(2)
    m = build_method(name, inverter="reference")
    plain = m.provide(b, ctx(pol, ref, seed=5))
    cache = TrajectoryCache(tmp_path)
    cold = m.provide(b, ctx(pol, ref, seed=5, cache=cache))
    warm = m(b, ctx(pol, ref, seed=5, cache=cache))
    for k in ("x_w", "x_l", "target_w", "target_l"):
        assert torch.allclose(plain[k], cold[k], atol=1e-5)
    assert cache.hits == 4 and warm.provenance["cache_used"]
    per_img = 2 if name == "smpo" else 1  # one final step (ReNoise: two evaluations) per image
    assert warm.forwards.as_dict()["reference_no_grad"] == 2 * per_img + 2


def test_smpo_equal_scores_zero_gradient_and_reward_ordering():
    pol, ref = nets(0.05)
    s = torch.tensor([0.2, 0.2])
    out = build_method("smpo")(batch(2, scores=(s, s.clone())), ctx(pol, ref))
    out.loss.backward()
    assert torch.count_nonzero(grads(pol)) == 0
    b = batch(1, scores=(torch.tensor([0.1]), torch.tensor([0.3])))  # "loser" has the higher reward
    m = build_method("smpo", inverter="reference")
    p = m.provide(b, ctx(pol, ref, seed=1))
    p_same = build_method("smpo", inverter="reference").provide(
        PairBatch(b.x0_l, b.x0_w, b.cond, torch.tensor([0.3]), torch.tensor([0.1])), ctx(pol, ref, seed=1))
    assert torch.allclose(p["x_w"], p_same["x_w"]) and p["prob_w"].item() > 0.5
    with pytest.raises(ValueError, match="reward scores"):
        m.provide(PairBatch(b.x0_w, b.x0_l, b.cond), ctx(pol, ref))


def test_inversion_dpo_faithful_zero_gradient_at_reference_trajectory_target_not():
    pol, ref = nets(0.0)
    out = build_method("inversion-dpo", faithful=True, num_steps=8)(batch(1), ctx(pol, ref))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.6931472, abs=1e-6)
    assert torch.count_nonzero(grads(pol)) == 0  # exactly zero
    pol2, ref2 = nets(0.0)
    out2 = build_method("inversion-dpo", num_steps=8)(batch(1), ctx(pol2, ref2))
    out2.loss.backward()
    assert grads(pol2).abs().max() > 1e-6


@pytest.mark.parametrize("opts", [dict(faithful=True), dict(), dict(subsample=3), dict(faithful=True, subsample=2)])
def test_constant_memory_gradient_equals_standard(opts):
    res = {}
    for mode in ("standard", "constant-memory"):
        pol, ref = nets(0.02)
        out = build_method("inversion-dpo", num_steps=6, gradient=mode, beta=50.0, **opts)(batch(2), ctx(pol, ref, 3))
        if not out.backward_done:
            out.loss.backward()
        res[mode] = (out.loss.item(), grads(pol), out.forwards.as_dict())
    assert res["standard"][0] == pytest.approx(res["constant-memory"][0], rel=1e-6)
    g1, g2 = res["standard"][1], res["constant-memory"][1]
    assert g1.abs().max() > 0 and (g1 - g2).abs().max() <= 1e-5 * g1.abs().max(), (g1 - g2).abs().max()
    # replay costs one extra no-grad policy pass per point
    assert res["constant-memory"][2]["policy_no_grad"] == res["standard"][2]["policy_grad"]


def test_forward_counts_per_pair():
    pol, ref = nets(0.01)
    b = batch(2)
    f = build_method("diffusion-dpo")(b, ctx(pol, ref)).forwards.as_dict()
    assert (f["policy_grad"], f["reference_no_grad"]) == (2, 2)
    N = 10
    f = build_method("inversion-dpo", faithful=True, num_steps=N)(b, ctx(pol, ref)).forwards.as_dict()
    assert (f["reference_no_grad"], f["policy_grad"]) == (4 * N, 4 * N)  # 2 images × N × CFG 2, both passes
    f = build_method("inversion-dpo", num_steps=N, subsample=2)(b, ctx(pol, ref)).forwards.as_dict()
    assert (f["reference_no_grad"], f["policy_grad"]) == (4 * N, 2 * 2 * 2)
    f = build_method("inpo", faithful=True, eta=0.0)(b, ctx(pol, ref)).forwards.as_dict()
    assert f["reference_no_grad"] == 2 and 2 * 1 <= f["policy_no_grad"] <= 2 * 10 and f["policy_grad"] == 2


@pytest.mark.parametrize("faithful", [True, False])
def test_inversion_dpo_points_and_reused_reference_eps(faithful):
    from sgalign.diffusion import guided
    pol, ref = nets(0.01)
    b, N = batch(1), 5
    p = build_method("inversion-dpo", faithful=faithful, num_steps=N).provide(b, ctx(pol, ref))
    d = 1000 // N
    x0 = torch.cat([b.x0_w, b.x0_l])
    cond2 = torch.cat([b.cond, b.cond])
    if faithful:  # official: ε at (x_{g−Δ}, g) for g = 0, Δ, …; first step ᾱ_0 → ᾱ_0 leaves x₀ unchanged
        assert p["t"][0].tolist() == [k * d for k in range(N)]
        assert torch.equal(p["x"][:, 0], x0) and torch.allclose(p["x"][:, 1], x0, atol=1e-5)
    else:  # trajectory target: x_g told its own level g, N − 1 points
        assert p["t"][0].tolist() == [k * d for k in range(N - 1)]
    for j in range(p["t"].shape[1]):
        e = guided(fn(ref), 2.0)(p["x"][:, j], p["t"][:, j], cond2)
        assert torch.allclose(p["eps_ref"][:, j], e, atol=1e-5)

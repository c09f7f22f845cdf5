"""sgalign.diffusion: DDIM stepping and inversion against analytic references and diffusers' semantics."""
import math

import pytest
import torch

from sgalign.diffusion import (ForwardCounter, alpha_at, ddim_invert, ddim_sample, ddim_sigma, ddim_step,
                               diffusers020_grid, exact_grid, full_grid, guided, scaled_linear_alphas_cumprod)

AC64 = scaled_linear_alphas_cumprod(dtype=torch.float64)
MU, S = 0.3, 0.5  # Gaussian data N(MU, S²): E[ε | x_t] is analytic


def gaussian_eps(x, t, cond=None):
    a = alpha_at(AC64, t).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S * S + 1 - a)


def exact_flow(x0, a):
    """The probability-flow ODE solution for Gaussian data: x_t/√ᾱ − μ = (x₀ − μ)·√(S² + σ²)/S, σ² = (1−ᾱ)/ᾱ."""
    return a.sqrt() * (MU + (x0 - MU) * (S * S + (1 - a) / a).sqrt() / S)


def slope(ns, errs):
    x, y = torch.log(torch.tensor(ns, dtype=torch.float64)), torch.log(torch.tensor(errs, dtype=torch.float64))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def _levels(n, top=800):
    lv = torch.linspace(0, top, n + 1).round().long()
    lv[0] = -1  # clean start (ᾱ = 1)
    return lv


def test_renoise_target_round_trip_falls_as_n_minus_2_and_plain_ddim_as_n_minus_1():
    x0 = torch.tensor([[-1.0], [0.2], [1.3]], dtype=torch.float64).view(3, 1, 1, 1)
    ns = [10, 20, 40, 80]
    rt2, inv2, rt1 = [], [], []
    for n in ns:
        lv = _levels(n)
        # Heun-type ReNoise: ε₁ at (x_s, s), ε₂ at (x', t) — published ReNoise's target label
        tr = ddim_invert(x0, gaussian_eps, lv, AC64, labels=lv[:-1], renoise_steps=1, renoise_label="target")
        inv2.append((tr.final - exact_flow(x0, AC64[800])).abs().max().item())
        back = ddim_sample(tr.final, gaussian_eps, lv.flip(0), AC64, renoise_steps=1)
        rt2.append((back - x0).abs().max().item())
        tr1 = ddim_invert(x0, gaussian_eps, lv, AC64)
        rt1.append((ddim_sample(tr1.final, gaussian_eps, lv.flip(0), AC64) - x0).abs().max().item())
    assert slope(ns, rt2) == pytest.approx(-2.0, abs=0.3), rt2  # measured −1.82 (integer-level mesh)
    assert slope(ns, inv2) == pytest.approx(-2.0, abs=0.3), inv2
    # plain (first-order) DDIM round trip: N⁻¹, as theory says; recorded so nobody expects N⁻² from it
    assert slope(ns, rt1) == pytest.approx(-1.0, abs=0.15), rt1
    assert rt2[-1] < 1e-3 and rt1[-1] < 0.05


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_fixed_eps_inversion_then_sampling_returns_x0(dtype, tol):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=dtype)
    eps = torch.randn(3, 4, 5, 5, generator=g, dtype=dtype)
    fixed = lambda x, t, c: eps[: x.shape[0]]
    ac = AC64.to(dtype)
    lv = torch.tensor([-1, 50, 200, 450, 700, 999])
    tr = ddim_invert(x0, fixed, lv, ac)
    a = ac[999]
    assert torch.allclose(tr.final, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=tol)  # lands exactly on q(x_t|x0,ε)
    back = ddim_sample(tr.final, fixed, lv.flip(0), ac)
    assert (back - x0).abs().max().item() < tol


def test_ddim_step_hand_value_and_sigma():
    x, e = torch.tensor([[2.0]]), torch.tensor([[0.5]])
    a_s, a_d = torch.tensor([0.81]), torch.tensor([0.36])
    # x̂0 = (2 − 0.436·0.5)/0.9; x' = 0.6 x̂0 + 0.8·0.5
    x0 = (2 - math.sqrt(0.19) * 0.5) / 0.9
    assert ddim_step(x, e, a_s, a_d).item() == pytest.approx(0.6 * x0 + 0.4, rel=1e-6)
    assert ddim_sigma(torch.tensor(0.36), torch.tensor(0.81)).item() == pytest.approx(
        math.sqrt(0.19 / 0.64 * (1 - 0.36 / 0.81)), rel=1e-6)


def _recording(fn, log):
    def f(x, t, c):
        log.append((x.clone(), t.clone()))
        return fn(x, t, c)
    return f


def test_diffusers020_grid_visits_the_official_points():
    g = diffusers020_grid(torch.tensor([999, 150, 0]), 10)
    assert g.levels[0].tolist() == [-99, 1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert g.labels[0].tolist() == [-99, 1, 101, 201, 301, 401, 501, 601, 701, 801]
    assert g.n_steps.tolist() == [10, 3, 1]  # steps over grid values < t
    assert g.final_levels.tolist() == [901, 201, 1]  # lands near, not at, t
    # SD1.5 SmPO: set_timesteps(5) → {−199, 1, 201, 401, 601}
    assert diffusers020_grid(torch.tensor([999]), 5).labels[0].tolist() == [-199, 1, 201, 401, 601]
    # the (latent, timestep) points: ε at (x_g, g), each step g → g+100, first source level ᾱ_0
    # (SD scheduler configs have set_alpha_to_one=False)
    ac = scaled_linear_alphas_cumprod()
    x0 = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    net = lambda x, t, c: 0.3 * x + 0.001 * t.float().view(-1, 1, 1, 1)
    log = []
    g1 = diffusers020_grid(torch.tensor([999]), 10, initial_alpha=ac[0])
    tr = ddim_invert(x0, _recording(net, log), g1, ac)
    assert [int(t) for _, t in log] == [-99, 1, 101, 201, 301, 401, 501, 601, 701, 801]
    x = x0
    for k, g in enumerate([-99, 1, 101, 201, 301, 401, 501, 601, 701, 801]):
        assert torch.equal(log[k][0], x)
        a_s = ac[0] if g < 0 else ac[g]
        x = ddim_step(x, net(x, torch.tensor([g]), None), a_s.view(1), ac[g + 100].view(1))
    assert torch.allclose(tr.final, x, atol=1e-6)


def test_diffusers020_mode_matches_current_diffusers_arithmetic_but_labels_shift():
    """Current DDIMInverseScheduler (no roll; step g−Δ → g told label g) moves latents through the same ᾱ's as
    0.20 did; only the timestep the UNet is told differs (g+Δ now vs g then). With a label-blind ε the
    trajectories agree exactly; the recorded labels differ by Δ."""
    from diffusers import DDIMInverseScheduler
    ac = scaled_linear_alphas_cumprod()
    s = DDIMInverseScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                             set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(10)
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    blind = lambda x, t, c: torch.tanh(x)
    ours_log, theirs = [], []
    tr = ddim_invert(x0, _recording(blind, ours_log), diffusers020_grid(torch.tensor([999, 999]), 10,
                                                                       initial_alpha=ac[0]), ac)
    x = x0
    for t in s.timesteps:
        theirs.append(int(t))
        x = s.step(blind(x, t, None), int(t), x).prev_sample
    assert torch.allclose(tr.final, x, atol=1e-5)
    assert [int(t[0]) + 100 for _, t in ours_log] == theirs


def test_per_sample_timesteps_each_row_uses_its_own_t():
    ac = scaled_linear_alphas_cumprod()
    net = lambda x, t, c: torch.sin(x) * (1 + t.float().view(-1, 1, 1, 1) / 500)
    x0 = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([37, 640, 999])
    for make in (lambda tt: exact_grid(tt, 10), lambda tt: diffusers020_grid(tt, 10)):
        batched = ddim_invert(x0, net, make(t), ac)
        for i in range(3):
            single = ddim_invert(x0[i:i + 1], net, make(t[i:i + 1]), ac)
            assert torch.allclose(batched.final[i], single.final[0], atol=1e-6)
    assert exact_grid(t, 10).final_levels.tolist() == [37, 640, 999]  # our default lands exactly at t


def test_inactive_rows_are_not_evaluated():
    ac = scaled_linear_alphas_cumprod()
    c = ForwardCounter(lambda x, t, cond: x * 0.1)
    ddim_invert(torch.zeros(2, 1, 2, 2), c, exact_grid(torch.tensor([50, 999]), 10), ac)
    assert c.no_grad == 1 + 10  # one step for t=50, ten for t=999


def test_eta_jitter_is_eta_sigma_z():
    ac = scaled_linear_alphas_cumprod()
    x0 = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(4))
    net = lambda x, t, c: 0.5 * x
    g = diffusers020_grid(torch.tensor([1, 1]), 10, initial_alpha=ac[0])  # one step −99 → 1
    det = ddim_invert(x0, net, g, ac).final
    jit = ddim_invert(x0, net, g, ac, eta=0.1, generator=torch.Generator().manual_seed(9)).final
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    sigma = ddim_sigma(ac[1], ac[0])  # the official _get_variance(g + Δ, g) with ᾱ_0 for g < 0
    assert torch.allclose(jit, det + 0.1 * sigma * z, atol=1e-6)


@pytest.mark.parametrize("label", ["source", "target"])
def test_renoise_second_evaluation_label_and_value(label):
    ac = scaled_linear_alphas_cumprod()
    net = lambda x, t, c: 0.2 * x + 0.01 * t.float().view(-1, 1, 1, 1)
    log = []
    x0 = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    lv = torch.tensor([-1, 300])
    tr = ddim_invert(x0, _recording(net, log), lv, ac, labels=torch.tensor([100]), renoise_steps=1,
                     renoise_label=label)
    assert [int(t) for _, t in log] == [100, 100 if label == "source" else 300]
    one, a = torch.tensor([1.0]), ac[300].view(1)
    e1 = net(x0, torch.tensor([100]), None)
    xp = ddim_step(x0, e1, one, a)
    e2 = net(xp, torch.tensor([100 if label == "source" else 300]), None)
    assert torch.allclose(tr.final, ddim_step(x0, (e1 + e2) / 2, one, a), atol=1e-6)
    assert torch.allclose(tr.eps[:, 0], (e1 + e2) / 2) and torch.allclose(tr.eps_point[:, 0], e1)


def test_guidance_inside_eps_and_forward_counts():
    base = ForwardCounter(lambda x, t, c: x * c.view(-1, 1, 1, 1))
    x = torch.ones(2, 1, 1, 1)
    cond = torch.tensor([3.0, 5.0])
    e = guided(base, 2.0)(x, torch.tensor([0, 0]), cond)  # uncond = zeros → ε_u = 0
    assert torch.allclose(e.flatten(), torch.tensor([6.0, 10.0]))
    assert base.no_grad == 4  # two branches per latent
    assert guided(base, 1.0) is base


def test_full_grid_is_inversion_dpo_trajectory():
    g = full_grid(1, 80)
    assert g.labels[0, :3].tolist() == [0, 12, 24] and g.labels[0, -1].item() == 948
    assert g.levels[0, 0].item() < 0 and g.n_steps.item() == 80


def test_structured_conditioning_rows_and_clear_error():
    from sgalign.diffusion import cat_rows, select_rows
    cond = {"emb": torch.arange(6.0).view(3, 2), "pooled": (torch.tensor([1.0, 2.0, 3.0]),), "note": "sdxl"}
    sel = select_rows(cond, torch.tensor([2, 0]))
    assert sel["emb"].tolist() == [[4.0, 5.0], [0.0, 1.0]] and sel["pooled"][0].tolist() == [3.0, 1.0]
    assert cat_rows([sel, sel])["emb"].shape == (4, 2) and sel["note"] == "sdxl"
    # per-sample grids of different lengths evaluate row subsets of a dict conditioning
    ac = scaled_linear_alphas_cumprod()
    net = lambda x, t, c: x * c["emb"][:, :1, None, None]
    ddim_invert(torch.ones(3, 1, 2, 2), net, exact_grid(torch.tensor([5, 500, 999]), 10), ac, cond)
    with pytest.raises(TypeError, match="select_rows"):
        select_rows(object(), torch.tensor([0]))


def test_ddim_step_refuses_a_source_level_without_signal():
    """At alpha_bar = 0 (zero-terminal SNR, t = T) x0 is not recoverable from epsilon: one clear error, never NaN."""
    x, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="alpha_bar_src = 0"):
        ddim_step(x, eps, torch.tensor([0.0, 0.5]), torch.tensor([0.9, 0.9]))
    # into alpha_bar = 0 is fine: the step lands on pure noise, eps itself
    torch.testing.assert_close(ddim_step(x, eps, torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.0])), eps)

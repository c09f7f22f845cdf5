"""v-prediction bases in every method: the conversions, and each method's loss on a v model equal to its value on the
ε model that makes the same predictions (methods regress in the model's own space; Inversion-DPO works on ε)."""
import pytest
import torch
from diffusers import DDIMScheduler

from sgalign.diffusion import as_epsilon, epsilon_from_output, prediction_target
from sgalign.methods import MethodContext, build_method
from sgalign.methods.functional import per_sample_mse

from test_methods_providers import AC, ZEROS, batch, fn, grads, nets


def zsnr_scheduler():
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")


def test_v_target_is_diffusers_and_converts_back_to_epsilon_even_at_zero_terminal_snr():
    sched = zsnr_scheduler()
    ac = sched.alphas_cumprod
    assert ac[-1] == 0  # the zero-terminal-SNR end: x_T holds no image
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 4, 6, 6, generator=g), torch.randn(4, 4, 6, 6, generator=g)
    t = torch.tensor([0, 400, 998, 999])
    v = prediction_target(eps, x0, t, ac, "v_prediction")
    assert torch.equal(v, sched.get_velocity(x0, eps, t))  # bit for bit
    x_t = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(epsilon_from_output(v, x_t, t, ac, "v_prediction"), eps, atol=2e-6, rtol=0)
    assert torch.equal(epsilon_from_output(v, x_t, t, ac, "v_prediction")[3], x_t[3])  # ᾱ = 0: ε = x_T
    assert prediction_target(eps, x0, t, ac, "epsilon") is eps
    f = lambda x, tt, c: x
    assert as_epsilon(f, ac, "epsilon") is f
    with pytest.raises(ValueError, match="'sample' is not supported"):
        prediction_target(eps, x0, t, ac, "sample")


def v_of(model, ac=AC):
    """The v model whose predictions are exactly ``model``'s ε: v = (ε − √(1−ᾱ) x_t)/√ᾱ."""
    def f(x, t, c):
        a = ac[t].view(-1, 1, 1, 1)
        return (model(x, t, c) - (1 - a).sqrt() * x) / a.sqrt()
    return f


def pair_ctx(pol, ref, seed):
    e = MethodContext(fn(pol), fn(ref), AC, torch.Generator().manual_seed(seed), unconditional=ZEROS)
    v = MethodContext(v_of(pol), v_of(ref), AC, torch.Generator().manual_seed(seed), unconditional=ZEROS,
                      prediction="v_prediction")
    return e, v


@pytest.mark.parametrize("name,opts", [("diffusion-dpo", {}), ("sft", {}), ("inpo", {"inverter": "reference"}),
                                       ("inpo", {}), ("smpo", {})])
def test_dpo_family_and_sft_regress_v_on_a_v_model(name, opts):
    """Same draws, same inverted latents; the squared errors are the ε model's divided by ᾱ_t (v − v* =
    (ε − ε*)/√ᾱ), the model's own loss as diffusers' DPO script takes it; provenance says so."""
    pol, ref = nets(0.03)
    b = batch(3)
    ce, cv = pair_ctx(pol, ref, seed=4)
    m = build_method(name, **opts)
    pe, pv = m.provide(b, ce), m.provide(b, cv)
    xs = ("x_w", "x_l") if "x_w" in pe else ("x_t",)
    for k in xs + ("t",):
        torch.testing.assert_close(pv[k], pe[k], atol=2e-5, rtol=1e-5)  # the inversion ran on the same ε
    a = AC[pe["t"]]
    x = pe[xs[0]]
    tgt = "target_w" if "target_w" in pe else "target"
    err_e = per_sample_mse(pol(x, pe["t"], b.cond), pe[tgt])
    err_v = per_sample_mse(v_of(pol)(x, pe["t"], b.cond), pv[tgt])
    torch.testing.assert_close(err_v, err_e / a, rtol=2e-3, atol=0)
    out = m(b, pair_ctx(pol, ref, seed=4)[1])
    assert out.provenance["prediction_type"] == "v_prediction" and out.provenance["loss_space"] == "v_prediction"
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert grads(pol).abs().max() > 0


@pytest.mark.parametrize("faithful", [True, False])
def test_inversion_dpo_on_a_v_model_is_the_epsilon_method(faithful):
    res = {}
    for kind in ("epsilon", "v_prediction"):
        pol, ref = nets(0.02)
        c = pair_ctx(pol, ref, seed=2)[kind == "v_prediction"]
        out = build_method("inversion-dpo", faithful=faithful, num_steps=6, beta=50.0)(batch(2), c)
        out.loss.backward()
        res[kind] = (out.loss.item(), grads(pol), out.provenance)
    assert res["v_prediction"][0] == pytest.approx(res["epsilon"][0], rel=1e-4)
    g_e, g_v = res["epsilon"][1], res["v_prediction"][1]
    assert g_e.abs().max() > 0 and (g_e - g_v).abs().max() <= 1e-3 * g_e.abs().max()
    if faithful:  # the official objective's zero gradient at θ = θ_ref holds for a v model too
        pol, ref = nets(0.0)
        out = build_method("inversion-dpo", faithful=True, num_steps=6)(batch(1), pair_ctx(pol, ref, seed=2)[1])
        out.loss.backward()
        assert torch.count_nonzero(grads(pol)) == 0
    assert res["v_prediction"][2]["loss_space"] == "epsilon"
    assert res["v_prediction"][2]["prediction_type"] == "v_prediction"


def test_official_inversion_dpo_weights_refuse_the_zero_terminal_snr_level():
    """1/(2 alpha_bar) is infinite where alpha_bar = 0 (t = T - 1 of a zero-terminal-SNR schedule, reached with N = T):
    refused before any inversion; the uniform weighting of the same grid runs."""
    ac = zsnr_scheduler().alphas_cumprod
    pol, ref = nets(0.0)
    c = MethodContext(v_of(pol, ac), v_of(ref, ac), ac, torch.Generator().manual_seed(0), unconditional=ZEROS,
                      prediction="v_prediction")
    with pytest.raises(ValueError, match="alpha_bar = 0"):
        build_method("inversion-dpo", faithful=True, num_steps=1000)(batch(1), c)
    p = build_method("inversion-dpo", faithful=True, num_steps=8).provide(batch(1), c)  # top level 875: fine
    assert torch.isfinite(p["weights"]).all()


def test_official_per_batch_t_quirk_gives_v_of_the_latent_at_its_own_level():
    """InPO faithful: the batch is inverted to the first pair's t (t_inv) while each pair's network is told its own
    t; a v model's target is the v of x̂ at t_inv, so it converts back to the same τ there."""
    pol, ref = nets(0.0)
    b = batch(3)
    ce, cv = pair_ctx(pol, ref, seed=1)
    m = build_method("inpo", faithful=True, eta=0.0)
    pe, pv = m.provide(b, ce), m.provide(b, cv)
    t_inv = pe["t"][:1].expand(3)
    assert len(set(pe["t"].tolist())) > 1  # the quirk matters: pairs told different t
    a = AC[t_inv].view(-1, 1, 1, 1)
    torch.testing.assert_close(pv["target_w"], a.sqrt() * pe["target_w"] - (1 - a).sqrt() * b.x0_w)

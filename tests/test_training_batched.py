"""Batched batch preparation (winners and losers through the VAE in one call, each unique prompt through the text
encoders once) draws what the row-by-row path draws and gives every method the same loss up to float
reassociation: latents, conditioning and loss compared per method, with stochastic data settings (VAE sampling,
random flips and crops, prompt dropout) and with the latent and text caches (repeated images and prompts)."""
import pytest
import torch

from sgalign.methods import build_method
from sgalign.training.config import method_options
from sgalign.training.trainer import Trainer
from training_helpers import METHOD_OPTIONS, make_config, tiny_assets  # noqa: F401

METHODS = ["diffusion-dpo", "inpo", "smpo", "inversion-dpo", "sft"]
STOCHASTIC = ["data.cache_latents=false", "data.vae_sample=true", "data.random_flip=true", "data.center_crop=false",
              "data.proportion_empty_prompts=0.5", "data.cache_text=false", "data.batch_size=4"]
CACHED = ["data.batch_size=4"]  # 2 pairs in the data: the batch repeats images and prompts; latents cached


@pytest.fixture(scope="module")
def trainers(tiny_assets, tmp_path_factory):  # noqa: F811
    out = {}
    for task in ("t2i", "compositional"):
        for name, over in (("stochastic", STOCHASTIC), ("cached", CACHED)):
            cfg = make_config(tiny_assets, tmp_path_factory.mktemp(f"{task}-{name}"), task, overrides=over)
            out[task, name] = Trainer(cfg)
    return out


def _prepare(tr: Trainer, pairs, batched: bool):
    if tr.latent_cache is not None:
        tr.latent_cache.clear()
    if tr.encoder.cache is not None:
        tr.encoder.cache.clear()
    gen = torch.Generator().manual_seed(7)
    batch = tr.make_batch(pairs, gen, batched=batched)
    return batch, gen.get_state()


def _same_cond(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("setting", ["stochastic", "cached"])
@pytest.mark.parametrize("task", ["t2i", "compositional"])
@pytest.mark.parametrize("method", METHODS)
def test_batched_preparation_equals_row_by_row(trainers, task, setting, method):
    tr = trainers[task, setting]
    opts = dict(METHOD_OPTIONS[method])
    if method == "smpo" and task == "t2i":
        opts.update(s_min=0.1, s_max=0.3)
    if method == "inversion-dpo":
        opts["guidance_scale"] = 2.0  # guided: both CFG branches in one call
    if method == "smpo" and task == "compositional":
        pytest.skip("smpo needs reward scores (t2i data)")
    tr.method = build_method(method, **method_options(method, opts))
    pairs = tr.stream.next()
    row, state_row = _prepare(tr, pairs, batched=False)
    bat, state_bat = _prepare(tr, pairs, batched=True)
    assert torch.equal(state_row, state_bat)  # the same random draws, in the same order
    torch.testing.assert_close(bat.x0_w, row.x0_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bat.x0_l, row.x0_l, rtol=1e-5, atol=1e-6)
    _same_cond(bat.cond, row.cond)
    losses = []
    for b in (row, bat):
        with torch.no_grad():
            out = tr.method(b, tr.context(torch.Generator().manual_seed(3)))
        losses.append(out.loss_per_pair)
    # β (200) scales the MSE differences into the logit: input rounding of ~1e-7 shows as ~1e-5 in the loss
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)


def test_unique_prompts_are_encoded_once(trainers):
    tr = trainers["t2i", "cached"]
    calls = []
    enc = tr.encoder.text_encoders[0]
    hook = enc.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        tr.encoder.cache.clear()
        cond = tr.encoder.batch(["a red cube", "a blue ball", "a red cube", ""], [0, 1, 2, "__empty__"])
    finally:
        hook.remove()
    assert calls == [1, 1, 1]  # cached: each unique text once, alone (a cached row never depends on its batch)
    assert torch.equal(cond["text"][0], cond["text"][2])
    calls.clear()
    cache, tr.encoder.cache = tr.encoder.cache, None
    hook = enc.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        tr.encoder.batch(["a red cube", "a blue ball", "a red cube", ""], [0, 1, 2, "__empty__"])
    finally:
        hook.remove()
        tr.encoder.cache = cache
    assert calls == [3]  # uncached: the unique texts in one call


@pytest.mark.parametrize("task", ["t2i", "compositional"])
def test_inversion_dpo_fused_points_equal_per_point(trainers, task):
    """The standard gradient's one policy call over all trajectory points (CFG branches included) gives the
    per-point calls' ε and loss up to float reassociation."""
    from sgalign.diffusion.guidance import guided
    from sgalign.methods.inversion_dpo import point_eps
    tr = trainers[task, "cached"]
    tr.method = build_method("inversion-dpo", **method_options("inversion-dpo", {"num_steps": 4}))
    batch = tr.make_batch(tr.stream.next(), torch.Generator().manual_seed(1))
    ctx = tr.context(torch.Generator().manual_seed(2))
    with torch.no_grad():
        p = tr.method.provide(batch, ctx)
        pol = guided(ctx.policy, 2.0, ctx.unconditional)
        fused = point_eps(pol, p["x"], p["t"], p["cond2"], fused=True)
        single = point_eps(pol, p["x"], p["t"], p["cond2"], fused=False)
    assert len(fused) == len(single) == p["points"] == 3
    for a, b in zip(fused, single):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

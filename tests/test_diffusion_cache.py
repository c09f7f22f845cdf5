"""Trajectory cache: hits skip forwards, identical results, any key change misses, sharded safetensors."""
import torch

from sgalign.diffusion import (ForwardCounter, TrajectoryCache, cached_invert, ddim_invert, guided, model_fingerprint,
                               scaled_linear_alphas_cumprod)

AC = scaled_linear_alphas_cumprod()
LV = torch.tensor([-1, 100, 300, 600])


def _net(scale=1.0):
    return lambda x, t, c: scale * torch.tanh(x) + 0.001 * t.float().view(-1, 1, 1, 1) + c.view(-1, 1, 1, 1)


def _run(cache, x0, cond, fn, model="m0", grid="g0", guidance="cfg=1", ids=None):
    return cached_invert(cache, x0, fn, LV, AC, cond, model_hash=model, grid_spec=grid, guidance_spec=guidance,
                         image_ids=ids)


def test_hit_skips_forwards_and_returns_the_same_trajectory(tmp_path):
    cache = TrajectoryCache(tmp_path)
    x0, cond = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0.1, 0.2, 0.3])
    c = ForwardCounter(_net())
    first = _run(cache, x0, cond, c)
    assert c.no_grad == 3 * 3 and cache.misses == 3
    ref = ddim_invert(x0, _net(), LV, AC, cond)
    assert torch.equal(first.final, ref.final) and torch.equal(first.eps_point, ref.eps_point)
    c.reset()
    second = _run(cache, x0, cond, c)
    assert c.no_grad == 0 and cache.hits == 3
    assert torch.equal(second.latents, first.latents) and torch.equal(second.eps, first.eps)
    files = sorted(tmp_path.glob("*/*.safetensors"))
    assert len(files) == 3 and all(f.parent.name == f.stem[:2] for f in files)  # sharded by key prefix


def test_partial_hits_invert_only_missing_rows(tmp_path):
    cache = TrajectoryCache(tmp_path)
    x0 = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    _run(cache, x0[:1], torch.tensor([0.5]), _net())
    c = ForwardCounter(_net())
    out = _run(cache, x0, torch.tensor([0.5, 0.7]), c)
    assert c.no_grad == 3  # only row 1 inverted (3 steps)
    assert torch.allclose(out.final, ddim_invert(x0, _net(), LV, AC, torch.tensor([0.5, 0.7])).final, atol=1e-6)


def test_any_key_change_invalidates(tmp_path):
    cache = TrajectoryCache(tmp_path)
    x0, cond = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([0.1])
    _run(cache, x0, cond, _net())
    variants = [dict(x0=x0 + 1e-3), dict(cond=cond + 1), dict(model="m1"), dict(grid="g1"), dict(guidance="cfg=2"),
                dict(ids=["other-image"])]
    for v in variants:
        c = ForwardCounter(_net())
        _run(cache, v.get("x0", x0), v.get("cond", cond), c, v.get("model", "m0"), v.get("grid", "g0"),
             v.get("guidance", "cfg=1"), v.get("ids"))
        assert c.no_grad == 3, f"{v} should have missed"
    c = ForwardCounter(_net())
    _run(cache, x0, cond, c)
    assert c.no_grad == 0


def test_model_fingerprint_and_prune(tmp_path):
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    assert model_fingerprint(a) != model_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    cache = TrajectoryCache(tmp_path)
    x0 = torch.randn(2, 2, 4, 4)
    _run(cache, x0, torch.zeros(2), _net(), model="old")
    _run(cache, x0, torch.zeros(2), _net(), model="new")
    assert cache.prune(keep_model_hash="new") == 2
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 2


def test_guided_cache_hit_counts_nothing(tmp_path):
    cache = TrajectoryCache(tmp_path)
    base = ForwardCounter(lambda x, t, c: torch.tanh(x) * c.view(-1, 1, 1, 1))
    x0 = torch.randn(2, 2, 4, 4)
    _run(cache, x0, torch.ones(2), guided(base, 2.0), guidance="cfg=2")
    assert base.no_grad == 2 * 3 * 2  # CFG doubles
    base.reset()
    _run(cache, x0, torch.ones(2), guided(base, 2.0), guidance="cfg=2")
    assert base.no_grad == 0


def test_schedule_and_compute_dtype_are_part_of_the_key(tmp_path):
    """Same image, conditioning, model, grid and guidance, but another noise schedule (zero terminal SNR) or compute
    dtype: a miss, and the fresh trajectory differs from the stored one (it would have been served before)."""
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
    zt = torch.cumprod(1 - rescale_zero_terminal_snr(1 - AC / torch.cat([torch.ones(1), AC[:-1]])), 0)
    zt = zt.clamp(min=1e-6).to(AC.dtype)
    x0, cond = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0.1])
    first = _run(TrajectoryCache(tmp_path), x0, cond, _net())
    c = ForwardCounter(_net())
    other = cached_invert(TrajectoryCache(tmp_path), x0, c, LV, zt, cond, model_hash="m0", grid_spec="g0",
                          guidance_spec="cfg=1")
    assert c.no_grad == 3 and (other.final - first.final).abs().max() > 1e-2  # measured 0.078
    c.reset()
    _run(TrajectoryCache(tmp_path, compute_dtype="bfloat16"), x0, cond, c)
    assert c.no_grad == 3
    c.reset()
    _run(TrajectoryCache(tmp_path), x0, cond, c)  # the original settings still hit
    assert c.no_grad == 0


def test_trajectory_cache_refuses_stochastic_latents():
    from sgalign.training.config import TrainConfig
    ok = {"data": {"vae_sample": False, "random_flip": False}, "trainer": {"trajectory_cache": True}}
    assert TrainConfig.model_validate(ok).trainer.trajectory_cache
    for key, value in [("vae_sample", True), ("random_flip", True), ("center_crop", False)]:
        bad = {"data": {**ok["data"], key: value}, "trainer": {"trajectory_cache": True}}
        try:
            TrainConfig.model_validate(bad)
        except ValueError as e:
            assert f"data.{key}={str(value).lower()}" in str(e)
        else:
            raise AssertionError(f"{key}={value} with trajectory_cache accepted")

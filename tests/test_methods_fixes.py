"""Inversion-DPO's guidance branch (uncond option, cache keys) and the faithful optimizer settings, on a tiny ε net;
plus the numerical fact behind the faithful weight decay: the official wd·lr never changes an fp32 weight."""
import copy

import pytest
import torch
from torch import nn

from sgalign.diffusion import TrajectoryCache, Unconditional, model_fingerprint, scaled_linear_alphas_cumprod
from sgalign.methods import MethodContext, PairBatch, available_methods, build_method

AC = scaled_linear_alphas_cumprod()


class CondEps(nn.Module):
    """ε depends on a per-row conditioning scalar, so the unconditional branch matters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out, self.cemb = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1), nn.Linear(1, 8)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, cond):
        self.seen.append(cond.detach().clone())
        h = self.inp(x) + self.cemb(cond[:, None])[..., None, None] + t.float()[:, None, None, None] / 1000
        return self.out(torch.nn.functional.silu(h))


MINUS_ONE = Unconditional(lambda c: torch.full_like(c, -1.0), "minus-one")  # a model whose uncond is −1


def setup(unconditional=MINUS_ONE, cache=None):
    ref = CondEps().requires_grad_(False)
    pol = copy.deepcopy(ref).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    b = PairBatch(torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 4, 6, 6, generator=g), torch.tensor([0.7]),
                  image_ids_w=["w"], image_ids_l=["l"])
    ctx = MethodContext(lambda x, t, c: pol(x, t, c), lambda x, t, c: ref(x, t, c), AC, torch.Generator(), cache,
                        model_fingerprint(ref) if cache is not None else None, unconditional=unconditional)
    return pol, ref, b, ctx


@pytest.mark.parametrize("faithful, branch", [(False, "minus-one"), (True, "zeros")])
def test_guidance_uses_the_models_unconditional_branch_unless_faithful(faithful, branch):
    pol, ref, b, ctx = setup()
    out = build_method("inversion-dpo", faithful=faithful, num_steps=4)(b, ctx)
    want = -1.0 if branch == "minus-one" else 0.0
    for net in (ref, pol):  # inversion (reference) and policy pass: [uncond rows; cond rows] in one call (the
        # default policy pass evaluates every trajectory point in that one call: more rows of each)
        assert net.seen and all(len(c) % 4 == 0 and torch.equal(c, torch.tensor([want] * (len(c) // 2) +
                                                                                  [0.7] * (len(c) // 2)))
                                for c in net.seen)
    assert out.provenance["uncond"] == ("zeros" if faithful else "model")
    assert out.provenance["uncond_branch"] == branch


def test_model_branch_needs_one_and_scale_one_needs_none():
    _, _, b, ctx = setup(unconditional=None)
    with pytest.raises(ValueError, match="MethodContext.unconditional"):
        build_method("inversion-dpo", num_steps=4)(b, ctx)
    out = build_method("inversion-dpo", num_steps=4, guidance_scale=1.0)(b, ctx)  # no guidance: no branch
    assert out.provenance["uncond_branch"] is None
    assert build_method("inversion-dpo", num_steps=4, uncond="zeros")(b, ctx).provenance["uncond_branch"] == "zeros"
    with pytest.raises(ValueError, match="uncond: Input should be 'model' or 'zeros'"):  # at build, not at step 1
        build_method("inversion-dpo", num_steps=4, uncond="empty")


def test_cached_trajectories_are_keyed_by_the_unconditional_branch(tmp_path):
    cache = TrajectoryCache(tmp_path)
    m = build_method("inversion-dpo", faithful=True, num_steps=4)
    m(*setup(MINUS_ONE, cache)[2:])
    m(*setup(MINUS_ONE, cache)[2:])
    assert (cache.misses, cache.hits) == (2, 2)
    build_method("inversion-dpo", faithful=True, num_steps=4, uncond="model")(*setup(MINUS_ONE, cache)[2:])
    assert (cache.misses, cache.hits) == (4, 2)  # another branch, another trajectory: never a stale hit


def test_optimizer_overrides_only_for_faithful_inversion_dpo():
    assert build_method("inversion-dpo", faithful=True).optimizer_overrides() == {"weight_decay": 0.0}
    assert build_method("inversion-dpo").optimizer_overrides() == {}
    for name in available_methods():
        if name != "inversion-dpo":  # their official runs do decay weights (lr 1e-8 x 1024 pairs)
            assert build_method(name, faithful=True).optimizer_overrides() == {}


@pytest.mark.parametrize("opt", ["adafactor", "adamw"])
def test_official_weight_decay_is_below_fp32_resolution(opt):
    """The official launcher: weight decay 1e-2, lr 1e-8 x #GPUs (≤ 8): wd·lr ≤ 8e-10 < 2⁻²⁵, so with the exactly
    zero gradient of its objective no fp32 weight ever changes; at a world lr (4e-5 = 1e-5 x 4 pairs) it does."""
    from transformers.optimization import Adafactor

    def step(lr):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(64, 32) * 0.1)
        w0 = p.detach().clone()
        o = (Adafactor([p], lr=lr, weight_decay=1e-2, scale_parameter=False, relative_step=False,
                       warmup_init=False, clip_threshold=1.0) if opt == "adafactor"
             else torch.optim.AdamW([p], lr=lr, weight_decay=1e-2))
        for _ in range(3):
            p.grad = torch.zeros_like(p)
            o.step()
        return torch.equal(p.detach(), w0)

    assert step(8e-8)
    assert not step(4e-5)

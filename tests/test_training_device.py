"""One training step of every method with models and batch on an accelerator, on a CPU-only machine: the trainer is
given a fake device (tests/fake_device.py: CPU data behind tensors that report another device, with PyTorch's
cross-device rules enforced), while the dataloader still yields CPU images. Any tensor the trainer or a method
creates on the CPU and mixes with device tensors, or any CPU draw from the device's generator, raises
``DeviceMismatch``, as it would on a GPU."""
import pytest
import torch

from fake_device import FAKE, DeviceMismatch, FakeDevice, FakeGenerator, OnFake
from sgalign.training.trainer import Trainer, _micro_seed
from training_helpers import make_config, tiny_assets  # noqa: F401

METHODS = ["diffusion-dpo", "inpo", "smpo", "inversion-dpo", "sft"]
# every stochastic data path on (random crop and flip, VAE sampling, prompt dropout) and every score-using option
STOCHASTIC = ["data.cache_latents=false", "data.vae_sample=true", "data.random_flip=true", "data.center_crop=false",
              "data.proportion_empty_prompts=0.5", "trainer.max_steps=1", "optimizer.max_grad_norm=1.0"]
EXTRA = {"sft": ["method.options.sft.pick=best-score"]}


@pytest.fixture
def on_fake_device(monkeypatch):
    from accelerate import Accelerator
    monkeypatch.setattr(Accelerator, "device", property(lambda self: FAKE))
    # torch.Generator(device=<accelerator>) as the trainer makes it; a CPU generator reporting the fake device
    monkeypatch.setattr(Trainer, "generator",
                        lambda self, i: FakeGenerator().manual_seed(_micro_seed(self.cfg.trainer.seed, i)))
    import sgalign.training.trainer as trainer_mod
    mode = FakeDevice()
    for name in ("load_model",):  # loading builds modules on the real meta device first
        f = getattr(trainer_mod, name)
        monkeypatch.setattr(trainer_mod, name, lambda *a, _f=f, **k: _paused(mode, _f, *a, **k))
    with mode:
        yield


def _paused(mode, f, *args, **kwargs):
    with mode.paused():
        return f(*args, **kwargs)


def _one_step(tr: Trainer):
    policy = tr.acc.unwrap_model(tr.policy)
    before = {k: v.elem.clone() for k, v in policy.named_parameters() if v.requires_grad}
    out, gnorm, n, _ = tr._micro_step()
    after = dict(policy.named_parameters())
    moved = max((after[k].elem - v).abs().max().item() for k, v in before.items())
    return out, gnorm, n, moved


@pytest.mark.parametrize("task", ["compositional", "t2i"])
@pytest.mark.parametrize("method", METHODS)
def test_one_step_on_another_device(tiny_assets, tmp_path, on_fake_device, task, method):  # noqa: F811
    tr = Trainer(make_config(tiny_assets, tmp_path, task, method, STOCHASTIC + EXTRA.get(method, [])))
    assert all(isinstance(p, OnFake) for p in tr.policy.parameters())  # the models are on the device
    assert isinstance(tr.alphas_cumprod, OnFake) and isinstance(tr.vae.encoder.conv_in.weight, OnFake)
    out, gnorm, n, moved = _one_step(tr)
    assert n == 2 and torch.isfinite(out.loss.detach()).item() and gnorm is not None
    assert isinstance(out.loss, OnFake)
    assert moved > 0  # the optimizer step ran on the device tensors


def test_lora_and_ema_on_another_device(tiny_assets, tmp_path, on_fake_device):  # noqa: F811
    """LoRA (the reference is the base with adapters off) and EMA (shadow weights stepped after the optimizer)."""
    tr = Trainer(make_config(tiny_assets, tmp_path, "t2i", "smpo",
                             STOCHASTIC + ["model.train_unet=lora", "trainer.ema=true"]))
    out, gnorm, n, moved = _one_step(tr)
    tr.ema.step([p for p in tr.policy.parameters() if p.requires_grad])
    assert moved > 0 and all(isinstance(p, OnFake) for p in tr.ema.shadow_params)


def test_trajectory_cache_on_another_device(tiny_assets, tmp_path, on_fake_device):  # noqa: F811
    """The cached reference inversion (hashing, storing and serving device tensors), twice on the same batch."""
    cfg = make_config(tiny_assets, tmp_path, "t2i", "inversion-dpo",
                      ["trainer.trajectory_cache=true", "trainer.max_steps=2"])
    tr = Trainer(cfg)
    tr._micro_step()
    misses = tr.cache.misses
    tr.stream.load_state_dict({"sampler": {"epoch": 0, "position": 0, "seed": 0}})  # the same pairs again
    out, *_ = tr._micro_step()
    assert misses > 0 and tr.cache.misses == misses and tr.cache.hits == misses and out.provenance["cache_used"]


def test_fake_device_catches_a_cpu_mask():
    """The harness itself: a (B, 1, 1, 1) CPU mask on device latents (the old SmPO/SFT bug) is refused, a 0-d CPU
    tensor is allowed (as on CUDA), and a device generator cannot draw on the CPU."""
    with FakeDevice():
        x = torch.randn(2, 4, 2, 2, device=FAKE)
        with pytest.raises(DeviceMismatch):
            x.where(torch.ones(2, 1, 1, 1, dtype=torch.bool), x)
        assert isinstance(x * torch.tensor(2.0), OnFake)
        with pytest.raises(DeviceMismatch):
            torch.rand(1, generator=FakeGenerator())


@pytest.mark.parametrize("method, options", [("smpo", {"s_min": 0.0, "s_max": 1.0, "num_points": 3}),
                                             ("sft", {"pick": "best-score"})])
def test_score_masks_follow_the_latents(method, options):
    """SmPO's reward ordering and SFT's best-score pick take scores as a dataloader makes them (CPU) with latents on
    the device; the loser scored higher in row 0, so the swap branch runs."""
    from sgalign.diffusion import scaled_linear_alphas_cumprod
    from sgalign.methods import MethodContext, PairBatch, build_method
    with FakeDevice():
        net = torch.nn.Conv2d(4, 4, 3, padding=1).to(FAKE)
        eps = lambda x, t, c: net(x)  # noqa: E731
        g = torch.Generator().manual_seed(0)
        xw, xl = (torch.randn(2, 4, 4, 4, generator=g).to(FAKE) for _ in range(2))
        batch = PairBatch(xw, xl, None, torch.tensor([0.2, 0.9]), torch.tensor([0.8, 0.1]))
        ctx = MethodContext(eps, eps, scaled_linear_alphas_cumprod().to(FAKE), FakeGenerator().manual_seed(0))
        out = build_method(method, **options)(batch, ctx)
        out.loss.backward()
        assert isinstance(out.loss, OnFake) and torch.isfinite(out.loss).item()
        assert isinstance(net.weight.grad, OnFake)

"""Interrupt-and-resume equals uninterrupted training bit-for-bit (CPU); a NaN loss stops the run cleanly with
the last good checkpoint intact; LoRA's reference is the base with adapters disabled."""
import json

import pytest
import torch
from safetensors.torch import load_file

from sgalign.methods import DiffusionDPO, register_method, unregister_method
from sgalign.training.checkpoint import checkpoints, latest_checkpoint
from sgalign.training.trainer import Trainer, TrainingDiverged
from training_helpers import make_config, tiny_assets  # noqa: F401

# exercises every piece of state: AdamW moments, warmup + linear lr, EMA, the sampler position, VAE sampling and
# random flips / prompt dropout drawn from the per-micro-batch generators, SG encoder + UNet, accumulation 2
RESUME = ["trainer.max_steps=6", "checkpointing.every=2", "trainer.gradient_accumulation_steps=2", "trainer.ema=true",
          "trainer.ema_decay=0.9", "optimizer.lr_scheduler=linear", "optimizer.warmup_steps=2",
          "data.cache_latents=false", "data.vae_sample=true", "data.random_flip=true",
          "data.proportion_empty_prompts=0.3"]


def policy_state(tr):
    return {k: v.detach().clone() for k, v in tr.acc.unwrap_model(tr.policy).state_dict().items()}


def test_interrupt_and_resume_is_bit_exact(tiny_assets, tmp_path, monkeypatch):  # noqa: F811
    full = Trainer(make_config(tiny_assets, tmp_path / "full", overrides=RESUME))
    full.train()
    want, want_ema = policy_state(full), [p.clone() for p in full.ema.shadow_params]

    cut = Trainer(make_config(tiny_assets, tmp_path / "cut", overrides=RESUME))
    real = Trainer._micro_step

    def crash_after_step_4(self):
        if self.micro == 8:  # 4 optimizer steps x 2 micro-batches done, checkpoint step-4 written
            raise KeyboardInterrupt
        return real(self)
    monkeypatch.setattr(Trainer, "_micro_step", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    monkeypatch.setattr(Trainer, "_micro_step", real)
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000004"

    resumed = Trainer(make_config(tiny_assets, tmp_path / "cut", overrides=RESUME + ["checkpointing.resume=latest"]))
    result = resumed.train()
    got = policy_state(resumed)
    assert result.step == 6
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert all(torch.equal(a, b) for a, b in zip(want_ema, resumed.ema.shadow_params))
    assert resumed.stream.state_dict() == full.stream.state_dict()
    assert resumed.scheduler.get_last_lr() == full.scheduler.get_last_lr()
    assert not torch.equal(want["unet.conv_in.weight"],
                           load_file(str(tiny_assets["sd15-sg"] / "unet" / "diffusion_pytorch_model.safetensors"))
                           ["conv_in.weight"])  # it trained
    # the diffusers-format policy weights of the last checkpoint are the trained ones
    last = latest_checkpoint(tmp_path / "cut")
    saved = load_file(str(last / "policy" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(saved["conv_in.weight"], got["unet.conv_in.weight"])


class _NanAtFifth(DiffusionDPO):
    """Diffusion-DPO whose 5th call returns a NaN loss (test-only, to trigger the divergence stop)."""
    calls = 0

    def __call__(self, batch, ctx):
        out = super().__call__(batch, ctx)
        type(self).calls += 1
        if type(self).calls == 5:
            out.loss = out.loss * float("nan")
        return out


@pytest.fixture
def nan_method():
    register_method("test-nan-at-5")(_NanAtFifth)  # registered only for this test: the registry is global
    yield
    unregister_method("test-nan-at-5")


def test_nan_loss_stops_with_last_good_checkpoint_intact(tiny_assets, tmp_path, nan_method):  # noqa: F811
    _NanAtFifth.calls = 0
    tr = Trainer(make_config(tiny_assets, tmp_path, method="test-nan-at-5",
                             overrides=["trainer.max_steps=10", "checkpointing.every=2"]))
    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* step 5 .*step-00000004"):
        tr.train()
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    last = latest_checkpoint(tmp_path)
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 4
    # stopped before the optimizer step: the live weights are still those of the last good checkpoint
    saved = load_file(str(last / "policy" / "unet" / "diffusion_pytorch_model.safetensors"))
    live = tr.acc.unwrap_model(tr.policy).unet.state_dict()
    assert all(torch.equal(saved[k], live[k]) for k in saved)


def test_lora_reference_is_base_with_adapters_disabled(tiny_assets, tmp_path):  # noqa: F811
    tr = Trainer(make_config(tiny_assets, tmp_path, "t2i", overrides=[
        "model.train_unet=lora", "model.lora.rank=2", "trainer.max_steps=3", "optimizer.lr=1e-2"]))
    policy = tr.acc.unwrap_model(tr.policy)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    batch = tr.make_batch(tr.stream.next(), torch.Generator().manual_seed(0))
    x, t = batch.x0_w, torch.tensor([500, 10])
    base0 = {n: p.clone() for n, p in policy.named_parameters() if "lora" not in n}
    ref0, pol0 = tr._reference_out(x, t, batch.cond), policy(x, t, batch.cond).detach()
    assert torch.equal(ref0, pol0)  # LoRA B = 0 at init
    tr.train()
    assert torch.equal(tr._reference_out(x, t, batch.cond), ref0)  # the reference never changes
    assert not torch.allclose(policy(x, t, batch.cond).detach(), pol0)  # the policy did
    assert all(torch.equal(p, base0[n]) for n, p in policy.named_parameters() if "lora" not in n)
    assert (tmp_path / "checkpoints" / "step-00000003" / "policy" / "unet_lora").is_dir()


# the shipped world configs' data settings (configs/world/*.yaml): both caches on, posterior mean, no flips
CACHED = ["trainer.max_steps=6", "checkpointing.every=1", "data.cache_latents=true", "data.cache_text=true",
          "data.vae_sample=false", "data.random_flip=false"]


@pytest.fixture(scope="module")
def six_rows(tmp_path_factory):
    """6 annotations x 3 candidates at batch 2: a batch mixes cached and new images, so whether a cache holds an
    image depends on when the run was interrupted."""
    from sgalign.training.synthetic import write_candidate_dataset
    return write_candidate_dataset(tmp_path_factory.mktemp("six") / "cands", rows=6, k=3, seed=1)


def test_resume_with_latent_and_text_caches_is_bit_exact(tiny_assets, six_rows, tmp_path, monkeypatch):  # noqa: F811
    """Issue 29: kill + resume at several points equals the uninterrupted run bit for bit with the caches on (a
    batched VAE encode of only the uncached rows made the cached latents depend on the cache's history: 3.6e-5)."""
    assets = {**tiny_assets, "candidates": six_rows}
    full = Trainer(make_config(assets, tmp_path / "full", overrides=CACHED))
    full.train()
    want = policy_state(full)
    real = Trainer._micro_step
    for cut in (1, 2, 4):
        out = tmp_path / f"cut{cut}"

        def crash(self, cut=cut):
            if self.micro == cut:  # cut optimizer steps done and checkpointed; the caches die with the process
                raise KeyboardInterrupt
            return real(self)
        monkeypatch.setattr(Trainer, "_micro_step", crash)
        with pytest.raises(KeyboardInterrupt):
            Trainer(make_config(assets, out, overrides=CACHED)).train()
        monkeypatch.setattr(Trainer, "_micro_step", real)
        resumed = Trainer(make_config(assets, out, overrides=CACHED + ["checkpointing.resume=latest"]))
        assert resumed.train().step == 6
        got = policy_state(resumed)
        assert all(torch.equal(want[k], got[k]) for k in want), f"resume after step {cut} differs"

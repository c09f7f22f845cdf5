"""world VAE: the shipped checkpoint loads, its reconstructions are read exactly by the oracle, the recipe runs."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from sgalign.world import WorldOracle, render_array, sample_split
from sgalign.world.models.vae import WORLD_VAE_DIR, evaluate_world_vae, load_world_vae, reconstruct, to_uint8
from sgalign.world.models.data import to_tensor
from sgalign.world.robustness import oracle_accuracy

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_vae_loads_with_recorded_scaling_factor():
    vae = AutoencoderKL.from_pretrained(WORLD_VAE_DIR)
    record = json.loads((WORLD_VAE_DIR / "training_record.json").read_text())
    assert vae.config.scaling_factor == record["scaling_factor"] != 1.0
    assert {"seed", "steps", "batch", "train_wall_s", "machine", "test_metrics"} <= set(record)
    size = sum(p.stat().st_size for p in WORLD_VAE_DIR.rglob("*") if p.is_file())
    assert size < 5e6, size
    x = to_tensor(render_array(sample_split("test", 2, seed=5)))
    with torch.no_grad():
        z = vae.encode(x * 2 - 1).latent_dist.mode()
    assert z.shape == (2, 4, 16, 16)
    # scaled latents of renders are roughly unit-variance (the factor was fitted on validation renders)
    assert 0.5 < float((z * vae.config.scaling_factor).std()) < 2.0


def test_reconstructions_parse_exactly():
    vae = load_world_vae()
    scenes = sample_split("test", 12, seed=7)
    rec = to_uint8(reconstruct(vae, to_tensor(render_array(scenes))))
    acc = oracle_accuracy(scenes, WorldOracle().parse_batch(list(rec)))
    assert acc.graph_exact == 1.0, acc
    err = np.abs(rec.astype(int) - render_array(scenes).astype(int))
    assert err.mean() < 4.0, err.mean()


def test_evaluate_counts_a_blank_decoder_as_wrong():
    class Blank(torch.nn.Module):  # a "VAE" whose decoder returns the background only
        def encode(self, x):
            class D:
                def mode(self_):
                    return x

            return type("E", (), {"latent_dist": D()})()

        def decode(self, z):
            return type("O", (), {"sample": torch.full_like(z, 0.92)})()

    res = evaluate_world_vae(Blank(), sample_split("test", 4, seed=0))
    assert res["oracle_graph_exact"] == 0.0 and res["mse"] > 0.01


def test_pretrain_script_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain_vae", ROOT / "scripts" / "pretrain_vae.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path), "--steps", "5", "--batch", "4", "--eval-n", "8", "--scale-n", "8",
                 "--no-blend-test"])
    record = json.loads((tmp_path / "training_record.json").read_text())
    assert record["steps"] == 5 and record["batch"] == 4 and record["test_metrics"]["n"] == 8
    vae = AutoencoderKL.from_pretrained(tmp_path)
    assert vae.config.scaling_factor == record["scaling_factor"]
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()


# ---- the blend test -------------------------------------------------------------------------------------------
from sgalign.world import rules  # noqa: E402
from sgalign.world.models.vae import blend_test, read_colour, vae_loss, world_vae  # noqa: E402


def test_read_colour_reads_exact_rgb_blends_as_the_oracle_does():
    bg = np.asarray(rules.BACKGROUND, dtype=np.float64)
    for colour, rgb in rules.PALETTE.items():
        for lam in (0.2, 0.5, 0.8, 1.0):
            assert read_colour(bg + lam * (np.asarray(rgb) - bg)) == colour
        assert read_colour(bg + 0.1 * (np.asarray(rgb) - bg)) == "background"


class _PoolVae(torch.nn.Module):
    """A decoder exactly linear in its latent (4x4 average pool of RGB + a zero channel, nearest upsampling)."""

    class _Out:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def encode(self, x):
        z = torch.cat([torch.nn.functional.avg_pool2d(x, 4), torch.zeros(x.shape[0], 1, 16, 16)], 1)
        return self._Out(latent_dist=self._Out(mode=lambda: z))

    def decode(self, z):
        return self._Out(sample=torch.nn.functional.interpolate(z[:, :3], scale_factor=4, mode="nearest"))


def test_blend_test_passes_a_linear_decoder_and_reports_paths():
    out = blend_test(_PoolVae())
    assert out["passes"] and out["points"] == 11
    for colour, row in out["background"].items():
        assert row["reads"][0] == "background" and row["reads"][-1] == colour
        assert row["max_rgb_off_line"] < 1.0  # decoded points lie on the RGB blend line
    assert len(out["pairs"]) == 15


def test_blend_test_fails_the_plain_vae_whose_palette_lies_on_one_line():
    """The shipped plain L1 + KL VAE (the base recipe's starting point): background -> cyan passes through
    yellow, red, purple, blue and green (the diagnosis in docs/WORLD_MODELS.md)."""
    out = blend_test(load_world_vae(), pairs=False)
    assert not out["passes"]
    assert {"yellow", "red", "blue"} <= set(out["background"]["cyan"]["reads"])


def test_interpolation_consistency_term_is_zero_for_a_linear_decoder_and_trains():
    vae = world_vae(0)
    x = to_tensor(render_array(sample_split("train", 4, seed=1)))
    g = torch.Generator().manual_seed(0)
    loss, stats = vae_loss(vae, x, interp_weight=1.0, generator=g)
    loss.backward()
    assert stats["interp"] > 0 and stats["loss"] > stats["l1"]
    assert all(p.grad is not None for p in vae.decoder.parameters())
    for paths in ("background", "background+pairs"):
        _, s = vae_loss(vae, x, interp_weight=1.0, generator=torch.Generator().manual_seed(0), interp_paths=paths)
        assert np.isfinite(s["interp"])


def test_the_base_models_vae_passes_the_blend_test():
    """The world SD1.5-SG's VAE (the recipe's consistency fine-tune): every background -> colour latent path decodes
    to the background or that colour, read with the oracle's colour model."""
    from sgalign.world.paths import WORLD_SD15_SG

    out = blend_test(load_world_vae(WORLD_SD15_SG / "vae"), pairs=False)
    assert out["passes"], {c: v["reads"] for c, v in out["background"].items()}
    assert max(v["max_rgb_off_line"] for v in out["background"].values()) < 20.0


def test_latent_channel_normalisation_is_exact_and_centres_the_latents():
    """The affine change of latent coordinates baked into quant_conv / post_quant_conv: decoding a latent is unchanged,
    and the renders' latents become zero-mean, unit-std per channel (so sampling from zero-mean noise is unbiased)."""
    from sgalign.world.models.vae import latent_channel_stats, normalise_latent_channels

    vae = load_world_vae(WORLD_VAE_DIR)
    scenes = sample_split("validation", 40, seed=0)
    x = to_tensor(render_array(scenes[:8])) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x).latent_dist.mean).sample
        std_before = vae.encode(x).latent_dist.std
        mean, std = latent_channel_stats(vae, scenes)
        assert mean.abs().max() > 0.5  # the plain world VAE's latents are far from zero-mean: the case this fixes
        normalise_latent_channels(vae, mean, std)
        post = vae.encode(x).latent_dist
        after = vae.decode(post.mean).sample
        m2, s2 = latent_channel_stats(vae, scenes)
    assert torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(post.std, std_before / std[None, :, None, None], rtol=1e-3, atol=1e-6)
    assert m2.abs().max() < 1e-3 and (s2 - 1).abs().max() < 1e-3
    assert vae.config.scaling_factor == 1.0

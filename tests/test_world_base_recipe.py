"""The one-command world base recipe (sgalign.jobs.world_base) at a tiny budget: every stage, resume, refusal."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from sgalign.diffusion.loop import min_snr_weights
from sgalign.jobs.world_base import STAGES, StageBudget, WorldBaseRecipe, run_world_base, run_diffusion_stage, \
    scene_from_json, scene_to_json, train_scene


def tiny(out) -> WorldBaseRecipe:
    return WorldBaseRecipe(out=str(out), minutes=30, threads=1, vae=StageBudget(2, 0.0), vae_batch=4,
                           vae_eval_graphs=8, cache_graphs=16, stage1=StageBudget(3, 0.0),
                           stage2=StageBudget(2, 0.0), batch=4, save_every=2, log_every=1, warmup_steps=1,
                           calib_graphs=4, calib_steps=2, sg_layout_steps=2, sg_layout_batch=8, sg_layout_weight=1.0,
                           sg_layout_eval_graphs=16, t_high_frac=0.3,
                           attn_ground_weight=1.0,  # the default 64 graphs x 20 steps: 14 s of each run
                           relation_contrast_weight=1.0, relation_contrast_t_min=0,
                           guidance_scale=4.0,
                           graph_guidance_scale=9.0, graph_guidance_min_t=500, graph_guidance_negative="swapped")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("wb")
    final = run_world_base(tiny(out), command="test", log=lambda m: None)
    return out, final


def test_recipe_runs_every_stage_into_a_loadable_pipeline(built):
    out, final = built
    from sgalign.pipelines import StableDiffusionSGPipeline

    rec = json.loads((final / "training_record.json").read_text())
    assert list(rec["stages"]) == list(STAGES)
    assert rec["stages"]["stage1"]["steps"] == 3 and rec["stages"]["stage2"]["steps"] == 2
    # stage 1 trains the SG encoder with the UNet and text encoder (its gate open), 20 % of rows on text alone
    # ... and its box-regression head (models.sg_layout), both from the sg_layout stage's pre-training
    assert rec["stages"]["stage1"]["trained"] == ["unet", "text_encoder", "sg_encoder", "layout_head"]
    lay = rec["stages"]["sg_layout"]
    assert lay["steps"] == 2 and set(lay["validation"]) == {"box_mse", "baseline_mse", "r2"}
    assert lay["sensitivity_after"]["nodes"] > 0 and (out / "sg_layout" / "layout_head.safetensors").is_file()
    assert rec["stages"]["stage1"]["graph"] is True and rec["stages"]["stage1"]["graph_drop_prob"] == 0.2
    # the cross-attention grounding loss (models.attn_grounding) ran: a fraction's squared shortfall, in (0, 1)
    assert rec["stages"]["stage1"]["attn_ground_weight"] == 1.0
    assert rec["stages"]["stage1"]["attn_ground_grad"] == "all" and rec["stages"]["stage2"]["attn_ground_grad"] is None
    assert rec["stages"]["stage1"]["min_snr_floor"] == 0.0 and rec["stages"]["stage2"]["min_snr_floor"] is None
    assert 0.0 < rec["stages"]["stage1"]["ground_loss_last_200"] < 1.0
    assert rec["stages"]["stage2"]["ground_loss_last_200"] is None
    # the relation contrast ran: near log 2 for a model that barely reads its predicates yet
    # the folder's default sampler: the recipe's graph guidance
    index = json.loads((final / "model_index.json").read_text())
    assert (index["guidance_scale"], index["graph_guidance_scale"], index["graph_guidance_min_t"],
            index["graph_guidance_negative"]) == (4.0, 9.0, 500, "swapped")
    assert "guidance scale 4, graph guidance 9 on the steps with t >= 500, negative branch 'swapped'" in \
        (final / "README.md").read_text()
    rc = rec["stages"]["stage1"]["relation_contrast"]
    assert rc["weight"] == 1.0 and rc["t_min"] == 0 and 0.3 < rc["loss_last_200"] < 1.5
    assert rec["stages"]["stage2"]["relation_contrast"] is None
    assert rec["stages"]["stage2"]["trained"] == ["sg_encoder"]
    assert rec["steps"] == 5 and rec["wall_seconds"] > 0
    assert "stage 2: SG encoder alone" in (final / "README.md").read_text()
    assert rec["stages"]["vae"]["steps_done"] == 2 and "passes" in rec["stages"]["vae"]["blend_test"]
    # the latents the diffusion stages train on are zero-mean per channel (normalisation inside the VAE's weights)
    assert rec["stages"]["vae"]["latent_norm"] == "per-channel" and rec["stages"]["vae"]["scaling_factor"] == 1.0
    assert len(rec["stages"]["vae"]["latent_channel_norm"]["latent_mean"]) == 4
    assert rec["stages"]["vae"]["init"] == "sgalign/world/weights/world-vae"  # as named, not a machine path
    cal = rec["sampling_calibration"]
    assert cal["validation_graphs"] == 4 and 0.0 <= cal["initial_noise_mean_scale"] <= 1.0
    # calibrated with the folder's own sampler (its graph guidance), not plain guidance
    assert (cal["sampling"]["guidance_scale"], cal["sampling"]["graph_guidance_scale"],
            cal["sampling"]["graph_guidance_min_t"], cal["sampling"]["graph_guidance_negative"]) == (4.0, 9.0, 500,
                                                                                                    "swapped")
    assert json.loads((final / "model_index.json").read_text())["initial_noise_mean_scale"] == \
        cal["initial_noise_mean_scale"]
    pipe = StableDiffusionSGPipeline.from_pretrained(final)
    assert pipe.default_guidance_scale == 4.0  # the folder's guidance is what a call without one samples with
    s1 = StableDiffusionSGPipeline.from_pretrained(out / "stage1" / "pipeline")
    # stage 2 trains the SG encoder only: UNet and text encoder are stage 1's, bit for bit
    for a, b in zip(pipe.unet.state_dict().values(), s1.unet.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(pipe.text_encoder.state_dict().values(), s1.text_encoder.state_dict().values()):
        assert torch.equal(a, b)
    assert s1.sg_encoder.config.init == "variance-keeping" and float(s1.sg_encoder.alpha_obj) != 0.0
    assert float(pipe.sg_encoder.alpha_obj) != float(s1.sg_encoder.alpha_obj)  # stage 2 trained it further


def test_cache_holds_train_graphs_and_latents(built):
    import datasets

    out, _ = built
    ds = datasets.load_from_disk(str(out / "cache" / "data"))
    assert len(ds) == 16
    row = ds[3]
    assert scene_from_json(row["scene"]) == train_scene(0, 3)
    assert np.asarray(row["latent_mean"]).shape == (4, 16, 16)
    assert (np.asarray(row["latent_std"]) > 0).all()


def test_rerun_skips_done_stages_and_refuses_other_settings(built):
    out, final = built
    before = (final / "training_record.json").read_text()
    stamp = (out / "stage1" / "done.json").stat().st_mtime_ns
    run_world_base(tiny(out), command="test", log=lambda m: None)
    assert (out / "stage1" / "done.json").stat().st_mtime_ns == stamp
    assert json.loads((final / "training_record.json").read_text())["stages"] == json.loads(before)["stages"]
    other = tiny(out)
    other.unet_lr = 1e-4
    with pytest.raises(ValueError, match="unet_lr"):
        run_world_base(other, log=lambda m: None)
    # a folder whose recipe.json predates a setting ran at its default: resuming at another value is refused too
    spec = out / "recipe.json"
    kept = spec.read_text()
    old = json.loads(kept)
    del old["stage1_v_restart"]
    spec.write_text(json.dumps(old))
    try:
        with pytest.raises(ValueError, match="stage1_v_restart"):
            run_world_base(dataclasses.replace(tiny(out), stage1_v_restart=True), log=lambda m: None)
        run_world_base(tiny(out), command="test", log=lambda m: None)  # at its default: resumes
    finally:
        spec.write_text(kept)


def test_stage_resumes_from_its_checkpoint(built, tmp_path):
    """A stage whose checkpoint is at its last step resumes there and exports the same weights."""
    out, _ = built
    copy = tmp_path / "wb"
    shutil.copytree(out, copy)
    (copy / "stage2" / "done.json").unlink()
    shutil.rmtree(copy / "stage2" / "pipeline")
    rec = run_diffusion_stage(tiny(copy), 2, log=lambda m: None)
    assert rec["steps"] == 2
    from safetensors.torch import load_file

    a = load_file(out / "stage2" / "pipeline" / "sg_encoder" / "diffusion_pytorch_model.safetensors")
    b = load_file(copy / "stage2" / "pipeline" / "sg_encoder" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scene_json_round_trip_and_min_snr():
    sc = train_scene(5, 11)
    assert scene_from_json(scene_to_json(sc)) == sc
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 500, 999])
    w = min_snr_weights(sched, t, 5.0)
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w[0] < 0.01 and w[2] == 1.0  # low-noise steps down-weighted; high-noise steps keep weight 1


def test_snapshot_of_a_stage_is_its_checkpoints_ema_weights(built, tmp_path):
    """``--snapshot``: the last stage-1 checkpoint as a pipeline folder, labelled; at the stage's end its weights are
    the stage's own pipeline's (EMA) bit for bit; a folder the recipe never started is refused with one line."""
    from sgalign.errors import UserError
    from sgalign.jobs.world_base import recipe_of, snapshot_stage
    from sgalign.pipelines import StableDiffusionSGPipeline

    out, _ = built
    dst = snapshot_stage(recipe_of(out), 1, tmp_path / "snap", log=lambda m: None)
    index = json.loads((dst / "model_index.json").read_text())
    assert index["snapshot"] == {"stage": "stage1", "step": 3, "target": "epsilon"} and 0.0 <= index["initial_noise_mean_scale"] <= 1.0
    snap = StableDiffusionSGPipeline.from_pretrained(dst)
    s1 = StableDiffusionSGPipeline.from_pretrained(out / "stage1" / "pipeline")
    for name in ("unet", "sg_encoder", "text_encoder"):
        for a, b in zip(getattr(snap, name).state_dict().values(), getattr(s1, name).state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(UserError, match="recipe.json: not found"):
        recipe_of(tmp_path / "nothing")


def test_relation_contrast_is_log2_when_the_predicates_change_nothing_and_falls_when_they_help():
    """-log sigmoid(beta (mse_inverted - mse_true)) on the same x_t: a UNet blind to its conditioning scores log 2;
    one whose inverted-graph output misses by more scores less."""
    from sgalign.jobs.world_base import _relation_contrast
    from sgalign.pipelines import load_pipeline
    from sgalign.world import sample_split
    from sgalign.world.paths import WEIGHTS_DIR

    pipe = load_pipeline(WEIGHTS_DIR / "world-sd15-sg", arch="sd15")
    graphs = [sc.graph() for sc in sample_split("validation", 8, seed=0) if sc.graph().relations][:3]
    g = torch.Generator().manual_seed(0)
    noisy, target = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([900, 700, 999])
    r = WorldBaseRecipe(out="unused", relation_contrast_beta=50.0)
    on_graph = torch.tensor([True, False, True])
    calls = []

    class Blind(torch.nn.Module):  # ignores its conditioning: every graph denoises alike
        def forward(self, x, tt, encoder_hidden_states, return_dict=False):
            calls.append(encoder_hidden_states)
            return (x * 0.5,)

    pipe.unet = Blind()
    mse_true = ((noisy * 0.5 - target) ** 2).mean((1, 2, 3))
    got = _relation_contrast(r, pipe, graphs, on_graph, noisy, t, target, mse_true)
    assert got.item() == pytest.approx(np.log(2), abs=1e-6)
    # the inverted graphs' conditioning, each row on its own path (graph, text alone, graph)
    from sgalign.models.conditioning import build_conditioning
    from sgalign.world import invert_predicates
    tok, te = [pipe.tokenizer], [pipe.text_encoder]
    inv = [invert_predicates(x) for x in graphs]
    want = torch.cat([build_conditioning([inv[0]], pipe.sg_encoder, tok, te).prompt_embeds,
                      build_conditioning([inv[1]], None, tok, te, use_graph=False).prompt_embeds,
                      build_conditioning([inv[2]], pipe.sg_encoder, tok, te).prompt_embeds])
    torch.testing.assert_close(calls[0], want)
    better = _relation_contrast(r, pipe, graphs, on_graph, noisy, t, target, mse_true - 0.01)
    assert better.item() == pytest.approx(-np.log(1 / (1 + np.exp(-50.0 * 0.01))), rel=1e-5)


@pytest.mark.parametrize("bad", [["--relation-contrast-weight", "-1"], ["--relation-contrast-beta", "0"],
                                 ["--graph-guidance", "inf"], ["--stage1-share", "1.5"],
                                 ["--min-snr-floor", "-0.1"], ["--min-snr-floor", "0.1", "--min-snr-gamma", "0"],
                                 ["--stage1-eps-steps", "100"], ["--stage1-eps-steps", "9999", "--zero-snr-v"],
                                 ["--stage1-v-restart", "--zero-snr-v"], ["--guidance-scale", "1"],
                                 ["--guidance-rescale", "1.2"], ["--guidance-rescale", "nan"]])
def test_recipe_refuses_settings_that_would_train_the_wrong_thing(tmp_path, bad):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("pretrain_world", Path(__file__).parents[1] / "scripts" /
                                                  "pretrain_world.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as e:
        mod.main(["--out", str(tmp_path / "o")] + bad)
    assert e.value.code == 2 and not (tmp_path / "o").exists()  # EXIT_USAGE, before anything is written


def test_eps_warm_phase_trains_epsilon_on_the_default_schedule_then_v(built, monkeypatch):
    """``stage1_eps_steps``: steps before it draw x_t on the default schedule and regress epsilon with min-SNR 5 and
    no grounding; from it on, the configured zero-terminal-SNR v target with grounding."""
    import sgalign.jobs.world_base as wb
    from diffusers import DDIMScheduler
    from sgalign.errors import UserError
    from sgalign.pipelines import load_pipeline

    out, _ = built
    pipe = load_pipeline(out / "world-sd15-sg", arch="sd15")
    pipe.scheduler = DDIMScheduler.from_config({**pipe.scheduler.config, **wb.ZERO_SNR_V})
    seen = []
    real_target, real_w = wb.prediction_target, wb.min_snr_weights
    monkeypatch.setattr(wb, "prediction_target", lambda n, x, t, ac, kind: seen.append(
        ("target", kind, float(ac[-1]))) or real_target(n, x, t, ac, kind))
    monkeypatch.setattr(wb, "min_snr_weights", lambda sch, t, g, kind, *a: seen.append(("w", g, kind)) or
                        real_w(sch, t, g, kind, *a))
    r = dataclasses.replace(tiny(out), stage1_eps_steps=1, min_snr_gamma=0.0,
                            scheduler={**tiny(out).scheduler, **wb.ZERO_SNR_V})
    loss_fn = wb._stage_loss(r, 1, pipe, wb.LatentCache(out / "cache"), True, None)
    _, warm_stats = loss_fn(0)
    assert seen[0][:2] == ("target", "epsilon") and seen[0][2] > 0  # the default schedule: signal left at t = T
    assert seen[1] == ("w", wb.EPS_WARM_MIN_SNR_GAMMA, "epsilon")
    assert "ground" not in warm_stats and "contrast" not in warm_stats  # the tiny recipe has both on
    seen.clear()
    _, v_stats = loss_fn(1)
    assert seen == [("target", "v_prediction", 0.0)] and "ground" in v_stats  # zero-terminal SNR; plain v-MSE
    assert "contrast" in v_stats
    eps_pipe = load_pipeline(out / "world-sd15-sg", arch="sd15")  # its scheduler predicts epsilon: refused
    with pytest.raises(UserError, match="epsilon warm phase"):
        wb._stage_loss(r, 1, eps_pipe, wb.LatentCache(out / "cache"), True, None)


def test_every_recipe_folder_says_its_guidance_scale():
    """Every recipe folder says its guidance scale (the recipe's, 6 by default, which the calibration samples with
    too), so the pipeline, the world bench and the evaluation protocol sample with one value."""
    import sgalign.jobs.world_base as wb

    assert wb.sampler_defaults(WorldBaseRecipe())["guidance_scale"] == 6.0
    assert wb.sampler_defaults(WorldBaseRecipe(guidance_scale=3.0))["guidance_scale"] == 3.0
    # and its guidance rescale (0: off)
    assert wb.sampler_defaults(WorldBaseRecipe())["guidance_rescale"] == 0.0
    assert wb.sampler_defaults(WorldBaseRecipe(guidance_rescale=0.7))["guidance_rescale"] == 0.7


def test_v_restart_gives_the_v_phase_its_own_warmup_and_cosine(built):
    """``stage1_v_restart``: the optimiser stage 1 steps with has peak lr at the start of each phase (after its
    warmup) and ~0 at the end of each; without it, one cosine over the stage (W1's v phase: 0.5x down to 0)."""
    import sgalign.jobs.world_base as wb

    out, _ = built
    r = dataclasses.replace(tiny(out), stage1=StageBudget(8, 0.0), stage1_eps_steps=4, stage1_v_restart=True,
                            warmup_steps=1)
    module = torch.nn.Linear(2, 2)
    opt, sched, _ = wb._stage_optimizer(r, 1, {"unet": module}, 8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"] / r.unet_lr)
        opt.step()
        sched.step()
    want = [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))] * 2
    np.testing.assert_allclose(lrs, want, atol=1e-6)
    one = wb.stage_lr_factor(dataclasses.replace(r, stage1_v_restart=False), 1, 8)
    assert one(4) == pytest.approx(0.5) and wb.stage_lr_factor(r, 2, 8)(4) == pytest.approx(0.5)  # stage 2: one


def test_a_stage1_that_ends_inside_its_warm_phase_is_refused_and_its_snapshot_says_epsilon(built, tmp_path):
    """A stage 1 stopped at or before ``stage1_eps_steps`` holds epsilon weights: no v-labelled pipeline from it,
    and ``--snapshot`` saves it with the warm phase's schedule and target."""
    import sgalign.jobs.world_base as wb
    from sgalign.errors import UserError

    out, _ = built
    copy = tmp_path / "wb"
    for stage in ("vae", "cache", "sg_layout"):
        shutil.copytree(out / stage, copy / stage)
    r = dataclasses.replace(tiny(copy), stage1_eps_steps=3, calib_graphs=0,
                            scheduler={**tiny(copy).scheduler, **wb.ZERO_SNR_V})
    with pytest.raises(UserError, match="inside its epsilon warm phase"):
        run_diffusion_stage(r, 1, log=lambda m: None)
    assert not (copy / "stage1" / "pipeline").exists()
    snap = wb.snapshot_stage(r, 1, tmp_path / "snap", log=lambda m: None)
    index = json.loads((snap / "model_index.json").read_text())
    assert index["snapshot"] == {"stage": "stage1", "step": 3, "target": "epsilon (warm phase)"}
    sched = json.loads((snap / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["prediction_type"], sched["rescale_betas_zero_snr"]) == ("epsilon", False)

"""SD1.5-SG / SDXL-SG pipelines on tiny random-init models: batched graphs x seeds, determinism, CFG branches,
save/load round trip, loading from local base folders with clear errors."""
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from sgalign.diffusion.noise import image_generators, shrink_spatial_mean
from sgalign.models import SGEncoder
from sgalign.models.loading import MissingModelFileError, check_layout
from sgalign.pipelines.tiny import make_tiny, tiny_pipeline
from sgalign.pipelines import StableDiffusionSGPipeline, StableDiffusionXLSGPipeline
from sgalign.scene_graph import SceneGraph



ARCHS = ["sd15-sg", "sdxl-sg"]
CLS = {"sd15-sg": StableDiffusionSGPipeline, "sdxl-sg": StableDiffusionXLSGPipeline}
STEPS = 2


def graphs():
    a = SceneGraph.from_triples([("snow", ["white"]), ("river", ["calm"]), ("mountains", ["rocky"])],
                                [(0, "adjacent to", 1)])
    b = SceneGraph.from_triples([("cat", []), ("sofa", ["red"])], [(0, "on", 1)])
    return [a, b]


@pytest.fixture(scope="module")
def pipes():
    out = {}
    for arch in ARCHS:
        p = tiny_pipeline(arch, gate_init=0.5)
        p.set_progress_bar_config(disable=True)
        out[arch] = p
    return out


def run(pipe, gs=None, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "np")
    return pipe(graphs() if gs is None else gs, **kw).images


@pytest.mark.parametrize("arch", ARCHS)
def test_many_graphs_many_seeds_one_call(pipes, arch):
    pipe = pipes[arch]
    imgs = run(pipe, seeds=[3, 4])
    assert imgs.shape == (4, 16, 16, 3) and imgs.dtype == np.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0
    # deterministic: the same call again gives the same images
    assert np.array_equal(imgs, run(pipe, seeds=[3, 4]))
    # image g*K + k is graph g with seed k: equal to generating that pair alone
    alone = run(pipe, [graphs()[1]], seeds=[4])
    np.testing.assert_allclose(imgs[1 * 2 + 1], alone[0], atol=1e-5)
    # different seeds and different graphs give different images
    assert not np.allclose(imgs[0], imgs[1]) and not np.allclose(imgs[0], imgs[2])
    # latents out: (B, 4, 8, 8)
    lat = run(pipe, seeds=[3], output_type="latent", num_inference_steps=1)
    assert lat.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_generator_determinism(pipes, arch):
    pipe = pipes[arch]
    a = run(pipe, num_images_per_graph=2, generator=torch.Generator().manual_seed(0), eta=1.0)
    b = run(pipe, num_images_per_graph=2, generator=torch.Generator().manual_seed(0), eta=1.0)
    c = run(pipe, num_images_per_graph=2, generator=torch.Generator().manual_seed(1), eta=1.0)
    assert a.shape == (4, 16, 16, 3) and np.array_equal(a, b) and not np.allclose(a, c)
    with pytest.raises(ValueError, match="3 generators for 4 images"):
        run(pipe, num_images_per_graph=2, generator=[torch.Generator()] * 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_cfg_uses_the_right_unconditional_branch(pipes, arch, monkeypatch):
    pipe = pipes[arch]
    seen = []
    real = pipe.unet.forward

    def spy(sample, t, encoder_hidden_states, **kw):
        seen.append((encoder_hidden_states.clone(), kw.get("added_cond_kwargs")))
        return real(sample, t, encoder_hidden_states, **kw)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    run(pipe, seeds=[0], guidance_scale=5.0, num_inference_steps=1)
    emb, added = seen[0]
    cond = pipe.encode_graphs(graphs())
    assert emb.shape[0] == 4  # [uncond x2, cond x2]
    torch.testing.assert_close(emb[2:], cond.prompt_embeds)
    if arch == "sdxl-sg":
        assert not emb[:2].any() and not added["text_embeds"][:2].any()  # SDXL: zeros
        assert added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 4
    else:  # SD1.5: the empty text
        empty = pipe.encode_graphs([SceneGraph([])], use_graph=False).prompt_embeds
        torch.testing.assert_close(emb[:2], empty.expand(2, -1, -1))
    seen.clear()
    run(pipe, seeds=[0], guidance_scale=1.0, num_inference_steps=1)
    assert seen[0][0].shape[0] == 2  # no CFG: conditional branch only


@pytest.mark.parametrize("arch", ARCHS)
def test_gate_changes_images(pipes, arch):
    pipe = pipes[arch]
    a = run(pipe, seeds=[0])
    with torch.no_grad():
        old = pipe.sg_encoder.alpha_obj.clone()
        pipe.sg_encoder.alpha_obj.fill_(5.0)
    try:
        b = run(pipe, seeds=[0])
    finally:
        with torch.no_grad():
            pipe.sg_encoder.alpha_obj.copy_(old)
    assert not np.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_identical_images(pipes, arch, tmp_path):
    pipe = pipes[arch]
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["sg_encoder"] == ["sgalign.models.sg_encoder", "SGEncoder"]
    assert (tmp_path / "p" / "sg_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    back = CLS[arch].from_pretrained(tmp_path / "p")
    back.set_progress_bar_config(disable=True)
    assert back.sg_encoder.alpha_obj.item() == 0.5
    assert np.array_equal(run(pipe, seeds=[0, 1]), run(back, seeds=[0, 1]))
    # the same folder through the local loader (base layout + sg_encoder/)
    local = CLS[arch].from_local(tmp_path / "p")
    local.set_progress_bar_config(disable=True)
    assert np.array_equal(run(pipe, seeds=[0]), run(local, seeds=[0]))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_from_local_base_folder_plus_sg_encoder(arch, tmp_path):
    base = make_tiny(arch, tmp_path / arch)
    cls = StableDiffusionXLSGPipeline if arch == "sdxl" else StableDiffusionSGPipeline
    # a base folder has no SG encoder: a clear error, unless one is given or a random init is asked for
    with pytest.raises(MissingModelFileError, match="no sg_encoder/"):
        cls.from_local(base)
    pipe = cls.from_local(base, init_sg_encoder={"embed_dim": 8, "hidden_dim": 8, "mode": "faithful"})
    assert pipe.sg_encoder.config.text_dim == (64 if arch == "sdxl" else 32)
    pipe.sg_encoder.save_pretrained(tmp_path / "enc")
    again = cls.from_local(base, sg_encoder=tmp_path / "enc")
    for p in (pipe, again):
        p.set_progress_bar_config(disable=True)
    assert np.array_equal(run(pipe, seeds=[0]), run(again, seeds=[0]))
    # a missing file is named, with what it is for
    (base / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(base / "tokenizer")
    with pytest.raises(MissingModelFileError) as e:
        cls.from_local(base, sg_encoder=tmp_path / "enc")
    msg = str(e.value)
    assert "unet/diffusion_pytorch_model.safetensors (the denoising UNet: weights" in msg
    assert "tokenizer/vocab.json" in msg and "text_encoder/" not in msg


def test_real_sdxl_layout_with_extra_folders_and_fp16_variant(tmp_path):
    """The real SDXL base folder also has vae_1_0/, *.fp16.safetensors files etc.; only the needed files count."""
    base = make_tiny("sdxl", tmp_path / "sdxl")
    (base / "vae_1_0").mkdir()
    w = base / "text_encoder_2" / "model.safetensors"
    w.rename(w.with_name("model.fp16.safetensors"))
    with pytest.raises(MissingModelFileError, match="text_encoder_2/model.safetensors"):
        check_layout(base)
    assert check_layout(base, variant="fp16") == "sdxl"
    pipe = StableDiffusionXLSGPipeline.from_local(base, init_sg_encoder={}, variant="fp16")
    assert isinstance(pipe.sg_encoder, SGEncoder)


def test_laion_records_as_input(pipes):
    pipe = pipes["sdxl-sg"]
    recs = [g.to_record(img_id=str(i)) for i, g in enumerate(graphs())]
    assert np.array_equal(run(pipe, recs, seeds=[0]), run(pipe, seeds=[0]))
    with pytest.raises(ValueError, match="graphs"):
        pipe(num_inference_steps=1)


def test_fp16_vae_with_force_upcast_decodes_in_fp32(monkeypatch):
    pipe = tiny_pipeline("sdxl-sg")
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.to(torch.float16)
    pipe.vae.register_to_config(force_upcast=True)
    seen = []
    real = pipe.vae.decode

    def spy(z, **kw):
        seen.append((z.dtype, pipe.vae.dtype))
        return real(z, **kw)

    monkeypatch.setattr(pipe.vae, "decode", spy)
    img = run(pipe, seeds=[0], num_inference_steps=1)
    assert seen == [(torch.float32, torch.float32)] and pipe.vae.dtype == torch.float16
    assert np.isfinite(img).all()


def one_step_branches(pipe, monkeypatch, **kw):
    """One sampling step of ``kw``: its latents, and the UNet call's conditioning rows and outputs (all branches)."""
    seen, outs = [], []
    real = pipe.unet.forward

    def spy(sample, t, encoder_hidden_states, **k):
        out = real(sample, t, encoder_hidden_states, **k)
        seen.append(encoder_hidden_states.clone())
        outs.append(out[0].clone())
        return out

    monkeypatch.setattr(pipe.unet, "forward", spy)
    lat = run(pipe, seeds=[0], num_inference_steps=1, output_type="latent", **kw)
    monkeypatch.undo()
    return lat, seen[0], outs[0]


def step_from_initial_noise(pipe, guided, lat):
    """The one DDIM step the pipeline takes from its own initial noise (its draw, redone) with output ``guided``."""
    pipe.scheduler.set_timesteps(1)
    init = shrink_spatial_mean(randn_tensor(lat.shape, generator=image_generators([0], range(2), "shared"),
                                            dtype=lat.dtype), pipe.noise_mean_scale) * pipe.scheduler.init_noise_sigma
    return pipe.scheduler.step(guided, pipe.scheduler.timesteps[0], init, return_dict=False)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_guidance_is_the_two_condition_formula(pipes, arch, monkeypatch):
    """uncond + s (text - uncond) + s_g (cond - text), with text = the graphs without the SG residual; s_g = s is plain
    guidance by its own two-branch path (bit for bit); and with the graph's gate shut it is plain guidance too."""
    pipe = pipes[arch]
    plain = run(pipe, seeds=[0], guidance_scale=5.0)
    assert np.array_equal(plain, run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=5.0))
    lat, emb, e = one_step_branches(pipe, monkeypatch, guidance_scale=5.0, graph_guidance_scale=9.0)
    assert emb.shape[0] == 6  # [uncond x2, text x2, cond x2]
    torch.testing.assert_close(emb[2:4], pipe.encode_graphs(graphs(), use_graph=False).prompt_embeds)
    torch.testing.assert_close(emb[4:], pipe.encode_graphs(graphs()).prompt_embeds)
    e_u, e_t, e_c = e.chunk(3)
    torch.testing.assert_close(lat, step_from_initial_noise(pipe, e_u + 5.0 * (e_t - e_u) + 9.0 * (e_c - e_t), lat))
    assert not np.allclose(plain, run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0), atol=1e-4)
    with torch.no_grad():  # the gate shut: text == cond, so the graph's term is zero
        old = pipe.sg_encoder.alpha_obj.clone()
        pipe.sg_encoder.alpha_obj.fill_(0.0)
    try:
        np.testing.assert_allclose(run(pipe, seeds=[0], guidance_scale=5.0),
                                   run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0), atol=1e-5)
    finally:
        with torch.no_grad():
            pipe.sg_encoder.alpha_obj.copy_(old)


def test_graph_guidance_refuses_what_it_cannot_do(pipes):
    pipe = pipes["sd15-sg"]
    with pytest.raises(ValueError, match="needs classifier-free guidance"):
        run(pipe, seeds=[0], guidance_scale=1.0, graph_guidance_scale=3.0)
    cond = pipe.encode_graphs(graphs())
    with pytest.raises(ValueError, match="needs negative_conditioning"):
        pipe(conditioning=cond, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0, num_inference_steps=1)
    text = pipe.encode_graphs(graphs(), use_graph=False)
    a = pipe(conditioning=cond, negative_conditioning=text, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0,
             num_inference_steps=STEPS, output_type="np").images
    np.testing.assert_array_equal(a, run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0))


def test_graph_guidance_min_t_guides_the_early_steps_only(pipes, monkeypatch):
    pipe = pipes["sd15-sg"]
    sizes = []
    real = pipe.unet.forward

    def spy(sample, t, encoder_hidden_states, **kw):
        sizes.append((int(t), sample.shape[0]))
        return real(sample, t, encoder_hidden_states, **kw)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    pipe.scheduler.set_timesteps(4)
    ts = [int(t) for t in pipe.scheduler.timesteps]
    cut = ts[1]
    a = run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0, graph_guidance_min_t=cut,
            num_inference_steps=4)
    assert sizes == [(t, 6 if t >= cut else 4) for t in ts]  # 2 graphs x [uncond, text, cond] then [uncond, cond]
    monkeypatch.undo()
    full = run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0, num_inference_steps=4)
    plain = run(pipe, seeds=[0], guidance_scale=5.0, num_inference_steps=4)
    assert not np.allclose(a, full, atol=1e-5) and not np.allclose(a, plain, atol=1e-5)
    # above every step: plain guidance, bit for bit
    assert np.array_equal(plain, run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0,
                                     graph_guidance_min_t=10_000, num_inference_steps=4))


def test_a_folders_graph_guidance_is_its_default(pipes, tmp_path):
    """model_index.json's graph_guidance_scale / _min_t (the world base's sampler) survive a save and load and are
    what a plain call samples with; a call's own values win; the text path alone samples with plain guidance."""
    from sgalign.evaluation.conditioning_gap import sample_graph_images

    pipe = pipes["sd15-sg"]
    pipe.scheduler.set_timesteps(STEPS)
    cut = int(pipe.scheduler.timesteps[0])
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["graph_guidance_scale"] is None and index["graph_guidance_min_t"] == 0  # plain by default
    index.update(graph_guidance_scale=9.0, graph_guidance_min_t=cut)
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    local = StableDiffusionSGPipeline.from_local(tmp_path / "p")
    local.set_progress_bar_config(disable=True)
    assert local.graph_guidance(5.0) == (9.0, cut, "text") and local.graph_guidance(5.0, 5.0) == (None, 0, "text")
    assert local.graph_guidance(1.0)[0] is None  # without CFG the folder's graph guidance does not apply
    np.testing.assert_allclose(run(local, seeds=[0], guidance_scale=1.0), run(pipe, seeds=[0], guidance_scale=1.0),
                               atol=1e-6)
    explicit = run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0, graph_guidance_min_t=cut)
    np.testing.assert_allclose(run(local, seeds=[0], guidance_scale=5.0), explicit, atol=1e-6)
    np.testing.assert_allclose(run(local, seeds=[0], guidance_scale=5.0, graph_guidance_scale=5.0),
                               run(pipe, seeds=[0], guidance_scale=5.0), atol=1e-6)
    text = sample_graph_images(local, graphs(), [0], noise_keys=None, use_graph=False, steps=STEPS,
                               guidance_scale=5.0)
    assert text.shape == (2, 16, 16, 3)


def test_a_folders_guidance_scale_is_its_default(pipes, tmp_path):
    """model_index.json's guidance_scale (a zero-terminal-SNR v base wants less than an epsilon one): none -> the
    architecture's; set -> what a call without guidance_scale samples with, and what the world bench and the
    evaluation protocol take when not told."""
    from sgalign.evaluation.protocol import EvalProtocol
    from sgalign.evaluation.sampling import configure_sampling

    pipe = pipes["sd15-sg"]
    assert pipe.config.get("guidance_scale") is None and pipe.default_guidance_scale == 7.5
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["guidance_scale"] is None
    index["guidance_scale"] = 3.0
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    local = StableDiffusionSGPipeline.from_local(tmp_path / "p")
    local.set_progress_bar_config(disable=True)
    assert local.default_guidance_scale == 3.0
    np.testing.assert_allclose(run(local, seeds=[0]), run(pipe, seeds=[0], guidance_scale=3.0), atol=1e-6)
    assert not np.allclose(run(local, seeds=[0]), run(pipe, seeds=[0]), atol=1e-4)
    protocol = EvalProtocol(sampling={"guidance_scale": None, "scheduler": "ddim"})
    assert configure_sampling(local, protocol)["guidance_scale"] == 3.0
    index["guidance_scale"] = float("nan")
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="guidance_scale .* must be a finite number >= 1"):
        StableDiffusionSGPipeline.from_local(tmp_path / "p")


def test_rescale_guided_worked_example():
    """Lin et al.'s rescale: phi 1 gives the guided prediction the conditional one's per-sample std (mean kept up to
    that scale), phi 0 is the identity, and phi mixes the two linearly."""
    from sgalign.diffusion import rescale_guided

    g = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]], [[[0.0, 0.0], [0.0, 4.0]]]])  # per-sample std 2.582, 2.0
    c = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]], [[[2.0, 2.0], [2.0, 6.0]]]])  # per-sample std 0.577, 2.0
    full = rescale_guided(g, c, 1.0)
    np.testing.assert_allclose(full.flatten(1).std(1).numpy(), c.flatten(1).std(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(full[0].flatten().numpy(), (g[0] * (0.5773503 / 2.5819889)).flatten().numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(full[1].numpy(), g[1].numpy())  # same spread: unchanged
    assert rescale_guided(g, c, 0.0) is g
    np.testing.assert_allclose(rescale_guided(g, c, 0.7).numpy(), (0.7 * full + 0.3 * g).numpy(), rtol=1e-6)


def test_guidance_rescale_in_the_pipeline_and_the_folder(pipes, tmp_path, monkeypatch):
    """guidance_rescale rescales every guided step (the UNet's conditional branch as the reference), 0 is plain
    guidance bit for bit, a folder's value is what a call without one samples with (and what the results record),
    and a value outside [0, 1] is refused."""
    from sgalign.diffusion import rescale_guided
    from sgalign.evaluation.protocol import EvalProtocol
    from sgalign.evaluation.sampling import configure_sampling

    pipe = pipes["sd15-sg"]
    assert pipe.default_guidance_rescale == 0.0
    plain = run(pipe, seeds=[0], guidance_scale=5.0)
    np.testing.assert_array_equal(run(pipe, seeds=[0], guidance_scale=5.0, guidance_rescale=0.0), plain)
    seen = []
    import sgalign.pipelines.sg_pipeline as sgp

    def spy(guided, cond, phi):
        seen.append((guided.shape, cond.shape, phi))
        return rescale_guided(guided, cond, phi)

    monkeypatch.setattr(sgp, "rescale_guided", spy)
    resc = run(pipe, seeds=[0], guidance_scale=5.0, guidance_rescale=0.7)
    monkeypatch.undo()
    assert [phi for *_, phi in seen] == [0.7] * STEPS and all(a == b for a, b, _ in seen)
    assert not np.allclose(resc, plain, atol=1e-5)
    # with graph guidance too (three branches on the guided steps)
    gg = run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0, guidance_rescale=0.7)
    assert not np.allclose(gg, run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0), atol=1e-5)
    # without classifier-free guidance there is nothing to rescale
    np.testing.assert_array_equal(run(pipe, seeds=[0], guidance_scale=1.0, guidance_rescale=1.0),
                                  run(pipe, seeds=[0], guidance_scale=1.0))
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["guidance_rescale"] == 0.0
    index["guidance_rescale"] = 0.7
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    local = StableDiffusionSGPipeline.from_local(tmp_path / "p")
    local.set_progress_bar_config(disable=True)
    assert local.default_guidance_rescale == 0.7
    np.testing.assert_allclose(run(local, seeds=[0], guidance_scale=5.0), resc, atol=1e-6)
    np.testing.assert_allclose(run(local, seeds=[0], guidance_scale=5.0, guidance_rescale=0.0), plain, atol=1e-6)
    assert local.guidance_record(5.0)["guidance_rescale"] == 0.7
    assert local.guidance_record(5.0, rescale=0.0)["guidance_rescale"] == 0.0
    protocol = EvalProtocol(sampling={"guidance_scale": 5.0, "scheduler": "ddim"})
    assert configure_sampling(local, protocol)["guidance_rescale"] == 0.7
    with pytest.raises(ValueError, match="guidance_rescale must be a number in \\[0, 1\\]"):
        run(pipe, seeds=[0], guidance_scale=5.0, guidance_rescale=1.5)
    index["guidance_rescale"] = -0.1
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="the folder's default must be a number in"):
        StableDiffusionSGPipeline.from_local(tmp_path / "p")


def test_swapped_graph_guidance_contrasts_the_relations_directions(pipes, monkeypatch):
    """negative "swapped": uncond + s (cond - uncond) + (s_g - s) (cond - swapped), swapped = every relation's subject and
    object exchanged; a graph without relations has cond == swapped, so it samples as plain guidance."""
    pipe = pipes["sd15-sg"]
    lat, emb, e = one_step_branches(pipe, monkeypatch, guidance_scale=5.0, graph_guidance_scale=9.0,
                                    graph_guidance_negative="swapped")
    swapped = [g.swapped() for g in graphs()]
    assert [r.subject for r in swapped[1].relations] == [graphs()[1].relations[0].object]
    torch.testing.assert_close(emb[2:4], pipe.encode_graphs(swapped).prompt_embeds)
    e_u, e_n, e_c = e.chunk(3)
    torch.testing.assert_close(lat, step_from_initial_noise(pipe, e_u + 5.0 * (e_c - e_u) + 4.0 * (e_c - e_n), lat))
    alone = SceneGraph.from_triples([("cat", []), ("sofa", ["red"])], [])
    np.testing.assert_allclose(run(pipe, [alone], seeds=[0], guidance_scale=5.0),
                               run(pipe, [alone], seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0,
                                   graph_guidance_negative="swapped"), atol=1e-5)
    with pytest.raises(ValueError, match="graph_guidance_negative must be one of"):
        run(pipe, seeds=[0], guidance_scale=5.0, graph_guidance_scale=9.0, graph_guidance_negative="inverse")

"""One model loader (issue 30 item 1): ``models.loading.load_model`` returns the same modules, settings and
conditioning as diffusers' own ``from_pretrained``, on the shipped world SD1.5-SG and on tiny SDXL / plain folders;
its pipelines (``sgalign.pipelines.build_pipeline`` / ``load_pipeline``) sample the same images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sgalign.models.conditioning import build_conditioning
from sgalign.models.loading import MissingModelFileError, ModelComponents, load_component, load_model
from sgalign.pipelines import (StableDiffusionSGPipeline, StableDiffusionXLSGPipeline, build_pipeline,
                               load_pipeline)
from sgalign.world import sample_split
from sgalign.world.paths import world_model_path

WORLD = world_model_path()
needs_world = pytest.mark.skipif(not (WORLD / "model_index.json").exists(), reason="no shipped world SD1.5-SG")
MODULES = ("unet", "vae", "text_encoder", "text_encoder_2", "sg_encoder")


def assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert a.training == b.training


def assert_same_model(pipe, model) -> None:
    """Every module of diffusers' pipeline ``pipe`` equals ``model``'s (weights, dtype, mode), as do the scheduler
    config and the tokenizers' ids."""
    for name in MODULES:
        if getattr(pipe, name, None) is not None or name in model:
            assert_same_state(getattr(pipe, name), model[name])
    assert dict(pipe.scheduler.config) == dict(model["scheduler"].config)
    assert type(pipe.scheduler) is type(model["scheduler"])
    for name in ("tokenizer", "tokenizer_2"):
        if name in model:
            text = ["a red circle left of a blue square", "item"]
            assert getattr(pipe, name)(text).input_ids == model[name](text).input_ids


@pytest.fixture(scope="module")
def graphs():
    return [s.graph() for s in sample_split("test", 3, seed=0)]


def conditioning(c, graphs, use_graph=True):
    toks = [c["tokenizer"]] + ([c["tokenizer_2"]] if "tokenizer_2" in c else [])
    tes = [c["text_encoder"]] + ([c["text_encoder_2"]] if "text_encoder_2" in c else [])
    with torch.no_grad():
        return build_conditioning(graphs, c["sg_encoder"], toks, tes, use_graph=use_graph, height=64, width=64)


def images(pipe, graphs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(graphs[:2], seeds=[0], num_inference_steps=2, output_type="np").images


@needs_world
def test_world_model_loads_as_diffusers_loads_it(graphs):
    """The shipped world model through the one loader and through diffusers' ``from_pretrained`` (the loader the
    evaluation sampler, base_bench and the world recipe's final reload used): identical state dicts, settings,
    conditioning and images."""
    ref = StableDiffusionSGPipeline.from_pretrained(WORLD)
    model = load_model(WORLD)
    assert isinstance(model, ModelComponents) and model.arch == "sd15" and model.path == WORLD
    assert set(model) == {"scheduler", "tokenizer", "text_encoder", "unet", "vae", "sg_encoder"}
    assert_same_model(ref, model)
    # every folder setting (noise-mean scale, graph-guidance sampler) as diffusers' config has it
    assert "initial_noise_mean_scale" in model.settings
    assert model.settings == {k: ref.config[k] for k in model.settings}
    for use_graph in (True, False):
        a, b = conditioning(ref.components, graphs, use_graph), conditioning(model, graphs, use_graph)
        assert torch.equal(a.prompt_embeds, b.prompt_embeds)
    pipe = build_pipeline(model)
    assert type(pipe) is StableDiffusionSGPipeline and dict(pipe.config) | {"_name_or_path": None} == \
        dict(ref.config) | {"_name_or_path": None}
    assert np.array_equal(images(ref, graphs), images(pipe, graphs))
    assert np.array_equal(images(ref, graphs), images(StableDiffusionSGPipeline.from_local(WORLD), graphs))


@needs_world
def test_world_model_text_path_and_parts():
    """``text_only`` leaves the SG encoder out; ``parts`` load a component from another folder (the trainer's
    model.unet_init, the SG pre-training's model.vae ...), the same weights as the folder's own."""
    text = load_model(WORLD, text_only=True)
    assert "sg_encoder" not in text and text.sg_encoder is None
    ref = load_model(WORLD)
    parts = load_model(WORLD, parts={"unet": WORLD / "unet", "vae": WORLD / "vae", "text_encoder": None})
    for name in ("unet", "vae", "text_encoder", "sg_encoder"):
        assert_same_state(ref[name], parts[name])
    assert_same_state(ref["vae"], load_component("vae", WORLD / "vae"))
    with pytest.raises(ValueError, match="text_encoder_2"):
        load_model(WORLD, parts={"text_encoder_2": WORLD / "text_encoder"})
    t2i = load_pipeline(WORLD, text_only=True)
    assert type(t2i).__name__ == "StableDiffusionPipeline" and t2i.safety_checker is None


@pytest.mark.parametrize("arch", ["sdxl-sg", "sdxl", "sd15"])
def test_tiny_folders_load_as_diffusers_loads_them(arch, tmp_path, graphs):
    """SDXL-SG (two text encoders, its SG encoder), plain SDXL and SD1.5 (a text path with the folder's settings
    and feature extractor, as the evaluation sampler loaded them with ``from_pretrained``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from sgalign.pipelines.tiny import make_tiny

    folder = make_tiny(arch, tmp_path / arch)
    model = load_model(folder)
    assert model.arch == ("sdxl" if arch.startswith("sdxl") else "sd15")
    if arch == "sdxl-sg":
        ref = StableDiffusionXLSGPipeline.from_pretrained(folder)
        assert_same_model(ref, model)
        a, b = conditioning(ref.components, graphs), conditioning(model, graphs)
        assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.add_time_ids, b.add_time_ids)
        assert torch.equal(a.pooled_prompt_embeds, b.pooled_prompt_embeds)
        assert np.array_equal(images(ref, graphs), images(build_pipeline(model), graphs))
        return
    kw = {"safety_checker": None, "requires_safety_checker": False} if arch == "sd15" else {}
    ref = (StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline).from_pretrained(folder, **kw)
    assert_same_model(ref, model)
    pipe = build_pipeline(model, text_only=True)
    assert type(pipe) is type(ref) and dict(pipe.config) | {"_name_or_path": None} == \
        dict(ref.config) | {"_name_or_path": None}
    assert {k for k, v in pipe.components.items() if v is not None} == \
        {k for k, v in ref.components.items() if v is not None}
    gen = lambda p: p(["a red circle"], num_inference_steps=2, generator=torch.Generator().manual_seed(0),  # noqa
                      output_type="np").images
    pipe.set_progress_bar_config(disable=True)
    ref.set_progress_bar_config(disable=True)
    assert np.array_equal(gen(ref), gen(pipe))
    with pytest.raises(MissingModelFileError, match="no sg_encoder/"):  # an SG pipeline needs an encoder
        load_pipeline(folder)

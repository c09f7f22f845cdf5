"""scripts/make_tiny.py: complete tiny random-init folders in the real layouts, loadable by plain diffusers /
transformers classes where the layout is standard, and by our SG pipelines."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sgalign.models import SGEncoder
from sgalign.models.loading import check_layout
from sgalign.pipelines import StableDiffusionSGPipeline, StableDiffusionXLSGPipeline
from sgalign.scene_graph import SceneGraph, clip_tokenizer



ROOT = Path(__file__).resolve().parents[1]
SD15_FILES = {"model_index.json", "README.md", "scheduler/scheduler_config.json", "text_encoder/config.json",
              "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
              "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
              "vae/diffusion_pytorch_model.safetensors"}
SDXL_FILES = SD15_FILES | {"text_encoder_2/config.json", "text_encoder_2/model.safetensors",
                           "tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer_config.json"}
SG_FILES = {"sg_encoder/config.json", "sg_encoder/diffusion_pytorch_model.safetensors"}
EXPECTED = {"sd15": SD15_FILES | {"feature_extractor/preprocessor_config.json"}, "sdxl": SDXL_FILES,
            "sd15-sg": SD15_FILES | SG_FILES, "sdxl-sg": SDXL_FILES | SG_FILES}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_tiny_script", ROOT / "scripts" / "make_tiny.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root = tmp_path_factory.mktemp("tiny")
    for arch in EXPECTED:
        script.main(["--arch", arch, str(root / arch)])
    return root, script


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_layout_and_random_init_label(folders, arch):
    root, _ = folders
    out = root / arch
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == EXPECTED[arch]
    assert check_layout(out) == ("sdxl" if arch.startswith("sdxl") else "sd15")
    index = json.loads((out / "model_index.json").read_text())
    assert "RANDOM-INIT" in index["_sgalign_random_init"] and "RANDOM-INIT" in (out / "README.md").read_text()
    if arch == "sd15":
        assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    if arch == "sdxl":
        assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"]


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_components_load_with_plain_classes(folders, arch):
    out = folders[0] / arch
    te = CLIPTextModel.from_pretrained(out / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    ref = clip_tokenizer()
    text = "white cold snow adjacent to reflective calm river"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert te.config.vocab_size == 49408 and te.config.hidden_size == 32
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    DDIMScheduler.from_pretrained(out / "scheduler")
    with torch.no_grad():  # 16x16 images <-> 8x8 latents
        assert vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean.shape == (1, 4, 8, 8)
    if arch.startswith("sdxl"):
        te2 = CLIPTextModelWithProjection.from_pretrained(out / "text_encoder_2")
        tok2 = CLIPTokenizer.from_pretrained(out / "tokenizer_2")
        assert tok2.pad_token == "!" and te2.config.projection_dim == 32
        assert unet.config.cross_attention_dim == 64 and unet.config.addition_embed_type == "text_time"
    else:
        assert unet.config.cross_attention_dim == 32
    if arch.endswith("-sg"):
        enc = SGEncoder.from_pretrained(out / "sg_encoder")
        assert enc.config.text_dim == unet.config.cross_attention_dim and enc.alpha_obj.item() == 0.0


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_base_folders_run_in_plain_diffusers_pipelines(folders, arch):
    out = folders[0] / arch
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a cat", num_inference_steps=2, height=16, width=16, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


@pytest.mark.parametrize("arch", ["sd15-sg", "sdxl-sg"])
def test_sg_folders_load_with_our_pipelines(folders, arch):
    out = folders[0] / arch
    cls = StableDiffusionXLSGPipeline if arch == "sdxl-sg" else StableDiffusionSGPipeline
    a, b = cls.from_pretrained(out), cls.from_local(out)
    sg = SceneGraph.from_triples([("cat", []), ("sofa", ["red"])], [(0, "on", 1)])
    imgs = []
    for p in (a, b):
        p.set_progress_bar_config(disable=True)
        imgs.append(p([sg], seeds=[0], num_inference_steps=2, output_type="np").images)
    assert imgs[0].shape == (1, 16, 16, 3) and np.array_equal(imgs[0], imgs[1])
    # the base part of an -sg folder still loads as the plain diffusers pipeline (sg_encoder ignored)
    plain = (StableDiffusionXLPipeline if arch == "sdxl-sg" else StableDiffusionPipeline).from_pretrained(out)
    assert not hasattr(plain, "sg_encoder") or plain.components.get("sg_encoder") is None


def test_refuses_non_empty_folder(folders):
    root, script = folders
    with pytest.raises(FileExistsError, match="not empty"):
        script.main(["--arch", "sd15", str(root / "sd15")])

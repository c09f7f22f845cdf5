"""Initial-noise mean scale (sgalign.diffusion.noise): the worked example, and every SG loading path honours the
folder's setting (from_pretrained, from_local, the trainer's export), so a method's model samples as its base does."""
from __future__ import annotations

import json

import pytest
import torch

from sgalign.diffusion.noise import shrink_spatial_mean
from sgalign.pipelines import StableDiffusionSGPipeline, StableDiffusionXLSGPipeline
from sgalign.pipelines.tiny import make_tiny, tiny_pipeline


def test_shrink_spatial_mean_worked_example():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # one image, one channel: spatial mean 4
    assert torch.equal(shrink_spatial_mean(x, 1.0), x)
    assert torch.equal(shrink_spatial_mean(x, 0.0), x - 4.0)
    assert torch.allclose(shrink_spatial_mean(x, 0.25), x - 3.0)  # keeps a quarter of the mean
    n = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = shrink_spatial_mean(n, 0.4)
    assert torch.allclose(out.mean((2, 3)), 0.4 * n.mean((2, 3)), atol=1e-6)
    assert torch.allclose(out - out.mean((2, 3), keepdim=True), n - n.mean((2, 3), keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        shrink_spatial_mean(n, 1.5)



@pytest.mark.parametrize("arch", ["sd15-sg", "sdxl-sg"])
def test_pipeline_uses_the_folders_scale_on_every_loading_path(arch, tmp_path):
    cls = StableDiffusionXLSGPipeline if arch == "sdxl-sg" else StableDiffusionSGPipeline
    assert tiny_pipeline(arch).noise_mean_scale == 1.0  # default: plain Gaussian noise
    folder = make_tiny(arch, tmp_path / "m")
    index = json.loads((folder / "model_index.json").read_text())
    assert "initial_noise_mean_scale" in index and index["initial_noise_mean_scale"] == 1.0
    index["initial_noise_mean_scale"] = 0.0
    (folder / "model_index.json").write_text(json.dumps(index))
    for pipe in (cls.from_pretrained(folder), cls.from_local(folder)):
        assert pipe.noise_mean_scale == 0.0
    # the sampled result equals a run from the same noise with its spatial mean removed by hand
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    from sgalign.world import sample_split

    g = [sample_split("test", 1, seed=0)[0].graph()]
    a = pipe(g, seeds=[3], num_inference_steps=2, guidance_scale=1.0, output_type="latent").images
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    noise = randn_tensor(shape, generator=[torch.Generator().manual_seed(3)], dtype=a.dtype)
    b = pipe(g, latents=noise - noise.mean((2, 3), keepdim=True), num_inference_steps=2, guidance_scale=1.0,
             output_type="latent").images
    assert torch.allclose(a, b, atol=1e-5)
    c = pipe(g, latents=noise, num_inference_steps=2, guidance_scale=1.0, output_type="latent").images
    assert not torch.allclose(a, c, atol=1e-4)  # explicit latents are used as given

"""configs/fullsize/ holds the exact full-size architectures (RANDOM-INIT, no weights): built on the meta device
they have the released models' parameter counts, and a forward runs (shapes only)."""
import pytest
import torch

from sgalign.models.fullsize import FULLSIZE_ROOT, REFERENCE_COUNTS, build_components, parameter_counts


@pytest.mark.parametrize("arch, expected", [
    ("sd15-sg", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sdxl-sg", {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                 "text_encoder_2": 694_659_840, "sg_encoder": 14_698_498}),  # LAION-SG's encoder, faithful keys
])
def test_parameter_counts_are_the_released_models(arch, expected):
    counts = parameter_counts(FULLSIZE_ROOT / arch)
    assert {k: counts[k] for k in expected} == expected
    assert counts["unet"] == REFERENCE_COUNTS[arch]["unet"]
    assert (FULLSIZE_ROOT / arch / "model_index.json").read_text().count("RANDOM-INIT") == 1


def test_sdxl_sg_conditioning_widths_agree():
    c = build_components(FULLSIZE_ROOT / "sdxl-sg", device="meta")
    te1, te2, unet, sg = c["text_encoder"], c["text_encoder_2"], c["unet"], c["sg_encoder"]
    width = te1.config.hidden_size + te2.config.hidden_size  # penultimate states of both encoders, concatenated
    assert width == unet.config.cross_attention_dim == sg.config.text_dim == 2048
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    assert pooled == te2.config.projection_dim == 1280
    out = unet(torch.randn(1, 4, 32, 32, device="meta"), torch.tensor([1], device="meta"),
               encoder_hidden_states=torch.randn(1, 77, width, device="meta"),
               added_cond_kwargs={"text_embeds": torch.randn(1, pooled, device="meta"),
                                  "time_ids": torch.randn(1, 6, device="meta")}).sample
    assert out.shape == (1, 4, 32, 32)

"""evaluate --task t2i on an SG folder (what train.py --task t2i exports from the world SD1.5-SG): its text path."""
import pytest
import torch

from sgalign.evaluation.sampling import load_evaluated_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from sgalign.pipelines.tiny import make_tiny

    root = tmp_path_factory.mktemp("tp")
    return make_tiny("sd15-sg", root / "sg", seed=0), make_tiny("sd15", root / "plain", seed=0)


def test_t2i_loads_sg_folder_as_its_text_path(folders):
    from diffusers import StableDiffusionPipeline

    from sgalign.pipelines import StableDiffusionSGPipeline

    sg_dir, _ = folders
    m = load_evaluated_model(sg_dir, "t2i")
    assert type(m.pipe) is StableDiffusionPipeline
    assert m.info["text_path_of_sg_model"] and m.info["class"] == "StableDiffusionSGPipeline"
    ref = StableDiffusionSGPipeline.from_pretrained(sg_dir)
    for k, v in ref.unet.state_dict().items():
        assert torch.equal(v, m.pipe.unet.state_dict()[k]), k
    # the text path is the prompt alone: same prompt embeddings as the SG pipeline's text encoder gives
    ids = m.pipe.tokenizer(["red small circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(m.pipe.text_encoder(ids)[0], ref.text_encoder(ids)[0])


def test_compositional_still_refuses_a_text_folder(folders):
    _, plain = folders
    assert not load_evaluated_model(plain, "t2i").info["text_path_of_sg_model"]
    with pytest.raises(ValueError, match="cannot run the compositional task"):
        load_evaluated_model(plain, "compositional")

"""world-CLIP: the shipped checkpoint loads in its three forms, reads composition, and the recipe runs."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from sgalign.scene_graph import clip_tokenizer
from sgalign.world.models.clip import WORLD_CLIP_DIR, evaluate_world_clip, load_world_clip

ROOT = Path(__file__).resolve().parents[1]
# Measured on the shipped checkpoint: 200 test graphs, sampler seed 0 -> vs_colour 0.995, vs_relation 0.700,
# vs_swap 0.645, i2t_r1 0.715 (docs/WORLD_MODELS.md). Chance: 0.5 for the pairwise columns, 0.005 for i2t_r1. The
# floors sit a few points under the measured values (0.60 is 3 binomial standard deviations above chance at n=200).
THRESHOLDS = {"vs_colour": 0.97, "vs_relation": 0.65, "vs_swap": 0.60, "i2t_r1": 0.65}


@pytest.fixture(scope="module")
def shipped():
    return load_world_clip(WORLD_CLIP_DIR)


def test_layout_and_size():
    files = {str(p.relative_to(WORLD_CLIP_DIR)) for p in WORLD_CLIP_DIR.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors.index.json", "model-vision.safetensors", "preprocessor_config.json",
            "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json",
            "training_record.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    size = sum(p.stat().st_size for p in WORLD_CLIP_DIR.rglob("*") if p.is_file())
    assert size < 22e6, size
    record = json.loads((WORLD_CLIP_DIR / "training_record.json").read_text())
    assert {"seed", "steps", "batch", "train_wall_s", "machine", "test_metrics"} <= set(record)


def test_clip_forward_and_text_tower_is_the_same_weights(shipped):
    model, tok = shipped
    assert isinstance(model, CLIPModel) and model.config.text_config.vocab_size == 49408
    images = torch.rand(2, 3, 64, 64)
    batch = tok(["red small circle left of blue large square ", "green large triangle "], padding=True,
                return_tensors="pt")
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=images)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.logits_per_image).all()
    text = CLIPTextModel.from_pretrained(WORLD_CLIP_DIR / "text_encoder").eval()
    ids = tok(["red small circle left of blue large square "], padding="max_length", max_length=77,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text(input_ids=ids).last_hidden_state
        ref = model.text_model(input_ids=ids).last_hidden_state
    assert hidden.shape == (1, 77, model.config.text_config.hidden_size)
    torch.testing.assert_close(hidden, ref, rtol=0, atol=0)


def test_tokenizer_is_the_real_clip_bpe(shipped):
    _, tok = shipped
    assert isinstance(tok, CLIPTokenizer) or type(tok).__name__.startswith("CLIPTokenizer")
    loaded = CLIPTokenizer.from_pretrained(WORLD_CLIP_DIR / "tokenizer")
    ref = clip_tokenizer()
    text = "purple large triangle above cyan small circle yellow small square "
    assert loaded(text).input_ids == ref(text).input_ids
    assert len(loaded) == 49408 and loaded.pad_token == "<|endoftext|>"


def test_retrieval_and_composition_beat_measured_thresholds(shipped):
    model, tok = shipped
    acc = evaluate_world_clip(model, tok, n=200, seed=0)
    for key, floor in THRESHOLDS.items():
        assert acc[key] > floor, (key, acc)


def test_pretrain_script_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain_clip", ROOT / "scripts" / "pretrain_clip.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path), "--steps", "5", "--batch", "8", "--eval-n", "16", "--seed", "1"])
    record = json.loads((tmp_path / "training_record.json").read_text())
    assert record["steps"] == 5 and record["batch"] == 8 and record["seed"] == 1
    assert record["machine"]["torch"] == torch.__version__ and record["test_metrics"]["n"] == 16
    model, _ = load_world_clip(tmp_path)
    assert model.config.vision_config.image_size == 64
    assert CLIPTextModel.from_pretrained(tmp_path / "text_encoder").config.vocab_size == 49408


def test_token_table_is_stored_in_float16_and_loads_as_float32(shipped, tmp_path):
    """The only float16 tensor: CLIP's 49,408-row token table (world text uses 22 rows); it loads back as float32
    and the text states are those of the float32 table up to its rounding."""
    import shutil

    from safetensors.torch import load_file

    from sgalign.world import sample_split
    from sgalign.world.models.clip import TOKEN_TABLE, store_token_table_fp16

    stored = load_file(WORLD_CLIP_DIR / "text_encoder" / "model.safetensors")
    assert stored[TOKEN_TABLE].dtype == torch.float16
    assert all(v.dtype == torch.float32 for k, v in stored.items() if k != TOKEN_TABLE)
    model, tok = shipped
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # round trip on a float32 copy: rewriting halves the file and moves the text states only by the rounding
    te = CLIPTextModel.from_pretrained(WORLD_CLIP_DIR / "text_encoder").eval()
    te.save_pretrained(tmp_path / "te", safe_serialization=True)
    shutil.copy(WORLD_CLIP_DIR / "text_encoder" / "config.json", tmp_path / "te" / "config.json")
    big = (tmp_path / "te" / "model.safetensors").stat().st_size
    store_token_table_fp16(tmp_path / "te" / "model.safetensors")
    assert (tmp_path / "te" / "model.safetensors").stat().st_size < 0.6 * big
    again = CLIPTextModel.from_pretrained(tmp_path / "te").eval()
    ids = tok([s.graph().serialize() for s in sample_split("test", 16, seed=0)], padding="max_length",
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = te(ids).last_hidden_state, again(ids).last_hidden_state
    assert torch.equal(a, b)  # the shipped table is already float16: rounding again changes nothing

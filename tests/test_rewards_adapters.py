"""Real adapters over tiny random-init models saved in the real formats: shapes, plumbing, missing-file errors."""
import importlib.util
import json
import shutil

import pytest
import torch
from PIL import Image

from sgalign.rewards import CompBench3in1Reward, DPGReward
from sgalign.rewards.backends import BackendUnavailable, RegexTextParser, VQAQuery, resolve
from sgalign.scene_graph import SceneGraph, clip_tokenizer

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "is", "there", "a", "the", "red", "blue",
         "circle", "square", "?", "left", "of", "[DEC]", "[ENC]"]
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
VISION = dict(TEXT, image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from transformers import (BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, CLIPConfig,
                              CLIPImageProcessor, CLIPModel, Owlv2Config, Owlv2ForObjectDetection,
                              Owlv2ImageProcessor, Owlv2Processor, OwlViTConfig, OwlViTForObjectDetection,
                              OwlViTImageProcessor, OwlViTProcessor)
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    # BLIP-VQA: tiny WordPiece vocabulary with BLIP's [DEC] bos and [ENC] tokens
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, bos_token="[DEC]",
                        additional_special_tokens=["[ENC]"])
    cfg = BlipConfig(text_config=dict(TEXT, vocab_size=len(WORDS), encoder_hidden_size=16, max_position_embeddings=64,
                                      bos_token_id=WORDS.index("[DEC]"), pad_token_id=0, sep_token_id=3),
                     vision_config=VISION, projection_dim=16)
    cfg.sgalign_random_init = True
    BlipForQuestionAnswering(cfg).save_pretrained(root / "blip")
    tok.save_pretrained(root / "blip")
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "blip")
    # CLIP and OWL: the real 49,408-token CLIP tokenizer
    ctok = clip_tokenizer()
    text = dict(TEXT, vocab_size=49408, max_position_embeddings=77)
    cfg = CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)
    cfg.sgalign_random_init = True
    CLIPModel(cfg).save_pretrained(root / "clip")
    ctok.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    for name, C, M, ip, P in [
            ("owlv2", Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor(size={"height": 32, "width": 32}),
             Owlv2Processor),
            ("owlvit", OwlViTConfig, OwlViTForObjectDetection,
             OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}),
             OwlViTProcessor)]:
        cfg = C(text_config=text, vision_config=VISION, projection_dim=16)
        cfg.sgalign_random_init = True
        M(cfg).save_pretrained(root / name)
        P(image_processor=ip, tokenizer=ctok).save_pretrained(root / name)
    return root


IMG = Image.new("RGB", (40, 30), (200, 30, 30))


# ---- BLIP ----------------------------------------------------------------------------------------------------------
def test_blip_missing_files(tmp_path, folders):
    from sgalign.rewards.backends import BlipVQA
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackendUnavailable) as e:
        BlipVQA.from_pretrained(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "model.safetensors" in msg and "vocab.txt" in msg
    assert "preprocessor_config.json" in msg
    part = tmp_path / "partial"
    shutil.copytree(folders / "blip", part)
    (part / "model.safetensors").unlink()
    with pytest.raises(BackendUnavailable, match=r"missing 1 required file\(s\) in .*partial: model\.safetensors"):
        BlipVQA.from_pretrained(part)


def test_blip_yes_no_readout_is_first_decoder_step(folders):
    from sgalign.rewards.backends import BlipVQA
    vqa = BlipVQA.from_pretrained(folders / "blip")
    assert (vqa.yes_id, vqa.no_id) == (WORDS.index("yes"), WORDS.index("no"))
    q = VQAQuery("is there a red circle?")
    (py, pn), = vqa.yes_no_probs(IMG, [q])
    # independent path: HF generate's raw logits of the first step (bos -> first answer token)
    ids, mask = vqa._questions([q])
    out = vqa.model.generate(input_ids=ids, pixel_values=vqa._pixels(IMG), attention_mask=mask, max_new_tokens=1,
                             output_logits=True, return_dict_in_generate=True)
    ref = out.logits[0][0].softmax(-1)
    assert py == pytest.approx(float(ref[vqa.yes_id]), rel=1e-5)
    assert pn == pytest.approx(float(ref[vqa.no_id]), rel=1e-5)
    # batching with padding changes nothing
    qs = [VQAQuery("the square?"), q, VQAQuery("is the blue square left of the red circle?")]
    batch = vqa.yes_no_probs(IMG, qs)
    assert len(batch) == 3 and batch[1] == pytest.approx((py, pn), rel=1e-5)
    assert batch[0] == pytest.approx(vqa.yes_no_probs(IMG, qs[:1])[0], rel=1e-5)
    assert all(0 < a < 1 and 0 < b < 1 and a + b < 1 for a, b in batch)
    assert vqa.yes_no_probs(IMG, []) == []


def test_blip_options_answers_and_provenance(folders, tmp_path):
    from sgalign.rewards.backends import BlipVQA
    cls_ = BlipVQA.from_pretrained(folders / "blip")
    enc = BlipVQA.from_pretrained(folders / "blip", first_token="enc", image_size=48)
    ids, _ = enc._questions([VQAQuery("is there a circle?")])
    assert int(ids[0, 0]) == WORDS.index("[ENC]")
    p_enc = enc.yes_no_probs(IMG, [VQAQuery("is there a circle?")])[0]  # 48 px: position encoding interpolated
    assert p_enc != pytest.approx(cls_.yes_no_probs(IMG, [VQAQuery("is there a circle?")])[0], rel=1e-6)
    answers = cls_.answer(IMG, [VQAQuery("is there a circle?"), VQAQuery("the square?")])
    assert len(answers) == 2 and all(isinstance(a, str) and "[DEC]" not in a for a in answers)
    assert cls_.info.kind == "real" and cls_.info.fallback and cls_.info.details["random_init"]
    assert enc.info.details["first_token"] == "enc" and enc.info.details["image_size"] == 48
    marked = tmp_path / "blip"  # the same weights without the random-init mark are reported as a real model
    shutil.copytree(folders / "blip", marked)
    cfg = json.loads((marked / "config.json").read_text())
    del cfg["sgalign_random_init"]
    (marked / "config.json").write_text(json.dumps(cfg))
    assert BlipVQA.from_pretrained(marked).info.fallback is False
    # plumbing through both rewards
    sg = SceneGraph.from_triples([("circle", ["red"]), ("square", ["blue"])], [(0, "bigger than", 1)])
    out = DPGReward(cls_)([IMG], [sg])
    assert 0.0 <= out.scores[0]["dpg"] <= 1.0 and out.any_fallback


# ---- CLIP ----------------------------------------------------------------------------------------------------------
def test_clip_similarity_is_raw_cosine(folders):
    from sgalign.rewards.backends import CLIPSimilarity
    sim = CLIPSimilarity.from_pretrained(folders / "clip")
    images = [IMG, Image.new("RGB", (32, 48), (0, 0, 255))]
    texts = ["a red circle", "a blue square left of a circle"]
    cos = sim.similarity(images, texts)
    assert len(cos) == 2 and all(-1 <= c <= 1 for c in cos)
    # independent path: CLIPModel.forward's logits_per_image = exp(logit_scale) * cosine
    enc = sim.tokenizer(texts, padding=True, return_tensors="pt")
    pv = sim.image_processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        out = sim.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pv)
    ref = out.logits_per_image.diagonal() / sim.model.logit_scale.exp()
    assert cos == pytest.approx(ref.tolist(), abs=1e-5)
    long = " ".join(["circle"] * 100)
    assert len(sim.similarity([IMG], [long])) == 1  # truncated by default
    strict = CLIPSimilarity.from_pretrained(folders / "clip", truncate=False)
    with pytest.raises(ValueError, match="over the context of 77"):
        strict.similarity([IMG], [long])
    with pytest.raises(ValueError, match="model_type 'blip', expected 'clip'"):
        CLIPSimilarity.from_pretrained(folders / "blip")


def test_clip_similarity_accepts_plain_tensor_features(folders, monkeypatch):
    # transformers 4.46 (allowed by pyproject) returns a tensor from get_*_features, 5.x a model output
    from sgalign.rewards.backends import CLIPSimilarity
    sim = CLIPSimilarity.from_pretrained(folders / "clip")
    texts, images = ["a red circle"], [IMG]
    expected = sim.similarity(images, texts)
    for name in ("get_image_features", "get_text_features"):
        original = getattr(sim.model, name)
        monkeypatch.setattr(sim.model, name, lambda *a, _f=original, **k: _f(*a, **k).pooler_output)
    assert sim.similarity(images, texts) == pytest.approx(expected, abs=1e-7)


def test_owl_detector_uses_the_older_post_processing_name(folders):
    # transformers < 4.51 has only post_process_object_detection (same boxes, scores, query-index labels)
    from sgalign.rewards.backends import OwlDetector
    det = OwlDetector.from_pretrained(folders / "owlvit", threshold=0.0)
    img = Image.new("RGB", (64, 48), (255, 0, 0))
    expected = det.detect(img, ["circle", "square"])
    new = det.processor

    class OldProcessor:
        def __call__(self, *a, **k):
            return new(*a, **k)

        def post_process_object_detection(self, outputs, threshold, target_sizes):
            return new.post_process_grounded_object_detection(outputs=outputs, threshold=threshold,
                                                              target_sizes=target_sizes)

    det.processor = OldProcessor()
    assert det.detect(img, ["circle", "square"]) == expected


def test_clip_missing_bpe_file(tmp_path):
    from sgalign.rewards.backends import CLIPSimilarity
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(BackendUnavailable, match=r"missing 1 required file\(s\) in .*: tokenizer.json or merges.txt"):
        CLIPSimilarity.from_pretrained(tmp_path)


# ---- OWL detectors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_owl_detector_boxes_and_labels(folders, kind):
    from sgalign.rewards.backends import OwlDetector
    det = OwlDetector.from_pretrained(folders / kind, threshold=0.0)
    img = Image.new("RGB", (64, 48), (255, 0, 0))
    dets = det.detect(img, ["circle", "square"])
    assert len(dets) == (32 // 8) ** 2  # one box per patch at threshold 0
    assert {d.label for d in dets} <= {"circle", "square"}
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    # boxes are in input pixels: OWLv2 pads to a 64x64 square, OWL-ViT stretches to 64x48
    inputs = det.processor(text=[["circle", "square"]], images=img, return_tensors="pt", padding=True)
    with torch.no_grad():
        raw = det.model(**inputs)
    scores = raw.logits[0].max(-1).values.sigmoid()
    best = int(scores.argmax())
    cx, cy, w, h = raw.pred_boxes[0, best].tolist()
    sx, sy = (64, 64) if kind == "owlv2" else (64, 48)
    expected = ((cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy)
    assert dets[0].box == pytest.approx(expected, abs=1e-3)
    assert dets[0].score == pytest.approx(float(scores[best]), rel=1e-5)
    assert det.info.details["model_type"] == kind and det.info.fallback
    assert det.detect(img, []) == []


def test_real_backends_in_3in1(folders):
    from sgalign.rewards.backends import BlipVQA, CLIPSimilarity, OwlDetector
    reward = CompBench3in1Reward(BlipVQA.from_pretrained(folders / "blip"),
                                 OwlDetector.from_pretrained(folders / "owlv2", threshold=0.0),
                                 CLIPSimilarity.from_pretrained(folders / "clip"), RegexTextParser())
    sg = SceneGraph.from_triples([("circle", ["red"]), ("square", ["blue"])],
                                 [(0, "left of", 1), (0, "bigger than", 1)])
    out = reward([IMG, IMG], [sg, "a red circle next to a blue square"])
    for s, p in zip(out.scores, out.parts):
        assert 0.0 <= s["compbench_3in1"] <= 1.0
        assert 0.0 <= p["compbench_3in1/A"] <= 1.0 and p["compbench_3in1/S"] is not None
    assert out.parts[0]["compbench_3in1/type"] == "spatial_action"
    prov = out.provenance[0].to_dict()
    assert set(prov["backends"]) == {"vqa", "detector", "similarity", "parser"} and prov["any_fallback"]


# ---- spaCy ---------------------------------------------------------------------------------------------------------
def test_spacy_parser_errors_and_fallback(tmp_path):
    from sgalign.rewards.backends import SpacyParser
    with pytest.raises(BackendUnavailable, match=r"meta\.json .*config\.cfg"):
        SpacyParser.from_pretrained(tmp_path)
    parser = resolve(lambda: SpacyParser.from_pretrained(tmp_path), RegexTextParser, policy="allow-fallback")
    assert parser.info.name == "regex-parser" and "meta.json" in parser.unavailable_reason
    if importlib.util.find_spec("spacy") is None:
        (tmp_path / "meta.json").write_text("{}")
        (tmp_path / "config.cfg").write_text("")
        with pytest.raises(BackendUnavailable, match="'spacy' is not installed"):
            SpacyParser.from_pretrained(tmp_path)

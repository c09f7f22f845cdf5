"""Eq. 17 combination with its parts recorded, provenance, manifests and the fallback policy."""
import json

import pytest
from PIL import Image

from sgalign.rewards import CombinedReward, CompBench3in1Reward, DPGConfig, DPGReward, Reward, combine
from sgalign.rewards.backends import (BackendUnavailable, Detection, Manifest, RegexTextParser, RequiredFile,
                                      ScriptedDetector, ScriptedSimilarity, ScriptedVQA, resolve)
from sgalign.rewards.backends.protocols import Detector, ImageTextSimilarity, TextParser, YesNoVQA
from sgalign.rewards.provenance import BackendInfo
from sgalign.scene_graph import SceneGraph


def test_combine_is_the_mean():
    assert combine({"dpg": 0.5, "compbench_3in1": 0.25}) == pytest.approx(0.375)
    assert combine({"a": 1.0, "b": 0.0, "c": 0.5}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        combine({"dpg": 1.2})
    with pytest.raises(ValueError):
        combine({})


def test_combined_reward_records_parts_and_provenance():
    sg = SceneGraph.from_triples([("circle", ["red"]), ("square", [])], [(0, "left of", 1)])
    vqa = ScriptedVQA(answers={"Is there a circle?": "yes", "Is there a square?": "yes", "Is the circle red?": "no",
                               "Is the circle left of the square?": "yes"},
                      probs={"red circle?": (0.5, 0.5), "square?": (1.0, 0.0)})
    det = ScriptedDetector([Detection("circle", 1.0, (0, 0, 10, 10)), Detection("square", 1.0, (40, 0, 50, 10))])
    dpg = DPGReward(vqa)
    cb = CompBench3in1Reward(vqa, det, ScriptedSimilarity())
    assert isinstance(dpg, Reward) and isinstance(cb, Reward)
    out = CombinedReward([dpg, cb])([Image.new("RGB", (64, 64))] * 2, [sg, sg])
    dpg_v = 3 / 4
    cb_v = (0.5 + (0.25 + 0.25 + 0.5)) / 2  # A = 0.5, S = 1, spatial type
    assert out.scores[0] == pytest.approx({"dpg": dpg_v, "compbench_3in1": cb_v, "reward": (dpg_v + cb_v) / 2})
    assert out.parts[0]["compbench_3in1/A"] == 0.5 and out.parts[0]["dpg/n_questions"] == 4
    assert [p.reward for p in out.provenance] == ["dpg", "compbench_3in1"]
    assert out.any_fallback
    rec = out.to_records()[1]
    json.dumps(rec)  # JSON-able for the candidate dataset
    assert rec["provenance"][1]["backends"]["detector"]["fallback"] is True
    assert rec["provenance"][0]["flags"] == DPGConfig().flags()
    with pytest.raises(ValueError, match="distinct"):
        CombinedReward([dpg, DPGReward(vqa)])


def test_protocols_are_structural():
    assert isinstance(ScriptedVQA(), YesNoVQA)
    assert isinstance(ScriptedDetector([]), Detector)
    assert isinstance(ScriptedSimilarity(), ImageTextSimilarity)
    assert isinstance(RegexTextParser(), TextParser)

    class WorldLikeVQA:  # any object with info + the two methods plugs in (e.g. the world oracle)
        info = BackendInfo("world-oracle", "0", "world", False)

        def answer(self, image, queries):
            return ["yes" if q.tuple.startswith("entity") else "no" for q in queries]

        def yes_no_probs(self, image, queries):
            return [(1.0, 0.0) for _ in queries]

    sg = SceneGraph.from_triples([("circle", ["red"])], [])
    out = DPGReward(WorldLikeVQA())([Image.new("RGB", (8, 8))], [sg])
    assert out.scores[0]["dpg"] == 0.5 and not out.any_fallback


def test_manifest_error_names_files_and_folder(tmp_path):
    m = Manifest("clip", (RequiredFile.of("config.json", purpose="model config"),
                          RequiredFile.of("model.safetensors", purpose="weights"),
                          RequiredFile.of("tokenizer.json", "vocab.json", purpose="tokenizer")), origin="openai/x")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackendUnavailable) as e:
        m.check(tmp_path)
    msg = str(e.value)
    assert "missing 2 required file(s)" in msg and str(tmp_path) in msg
    assert "model.safetensors (weights)" in msg and "tokenizer.json or vocab.json (tokenizer)" in msg
    assert "config.json" not in msg.split("file(s)")[1].split(":")[1].split(";")[0]
    with pytest.raises(BackendUnavailable, match="is not a folder"):
        m.check(tmp_path / "nowhere")
    with pytest.raises(BackendUnavailable, match="no weights folder given"):
        m.check(None)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "vocab.json").write_text("{}")
    assert m.check(tmp_path) == tmp_path


def test_resolve_policy():
    def build():
        raise BackendUnavailable("blip: missing model.safetensors")
    with pytest.raises(BackendUnavailable):
        resolve(build, ScriptedVQA, policy="strict")
    fb = resolve(build, ScriptedVQA, policy="allow-fallback")
    assert fb.info.fallback and "missing model.safetensors" in fb.unavailable_reason
    assert "missing model.safetensors" in fb.info.to_dict()["details"]["unavailable_reason"]
    with pytest.raises(ValueError):
        resolve(build, ScriptedVQA, policy="maybe")


def test_regex_parser_is_labelled_fallback():
    p = RegexTextParser()
    assert p.info.fallback and p.info.kind == "fallback"
    parsed = p.parse("A small red circle is left of a large blue square.")
    assert parsed.noun_chunks == ("A small red circle", "left", "a large blue square")
    assert parsed.span_text(0, 3) == "A small red"


def test_registry_by_name_and_fallback(tmp_path):
    from sgalign.rewards.backends import available, build_backend, register
    assert {"blip-vqa", "scripted"} <= set(available("vqa"))
    with pytest.raises(BackendUnavailable, match="blip-vqa: missing"):
        build_backend("vqa", "blip-vqa", path=str(tmp_path))
    fb = build_backend("vqa", "blip-vqa", path=str(tmp_path), policy="allow-fallback")
    assert fb.info.name == "fallback-vqa" and fb.info.fallback and "model.safetensors" in fb.unavailable_reason
    assert build_backend("parser", "spacy", path=str(tmp_path), policy="allow-fallback").info.name == "regex-parser"
    with pytest.raises(ValueError, match="unknown detector backend 'unidet'"):
        build_backend("detector", "unidet")

    class Oracle:
        info = BackendInfo("world-oracle", "1", "world", False)
        vocabulary = None

        def detect(self, image, queries):
            return []
    from sgalign.rewards.backends import registry
    register("detector", "test-world", lambda path=None: Oracle())
    try:
        assert isinstance(build_backend("detector", "test-world"), Detector)
    finally:
        del registry._REGISTRY["detector"]["test-world"]

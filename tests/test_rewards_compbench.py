"""T2I-CompBench 3-in-1 logic: worked examples for A, S (every branch of the position rule, the 0.5 floor,
"on top of" in both modes), C, the prompt type and T."""
import pytest
from PIL import Image

from sgalign.rewards.backends import (Detection, ParsedText, RegexTextParser, ScriptedDetector, ScriptedParser,
                                      ScriptedSimilarity, ScriptedVQA, Token)
from sgalign.rewards.compbench import (
    CompBench3in1Reward, CompBenchConfig, PromptTypeLists, attribute_questions, attribute_score, box_iou,
    extract_objects, find_locality, noun_phrases, position_score, pre_question, prompt_type_from_graph,
    prompt_type_heuristic, spatial_frame, spatial_score, strip_adjectives, three_in_one)
from sgalign.scene_graph import SceneGraph

OFFICIAL = CompBenchConfig.official()
CORRECTED = CompBenchConfig()


def parsed(spec, chunks=()):
    """'The/DET red/ADJ hat/NOUN' -> ParsedText (spaCy-like, hand-written)."""
    toks = []
    for w in spec.split(" "):
        text, pos = w.rsplit("/", 1)
        toks.append(Token(text, pos, " "))
    return ParsedText(tuple(toks), tuple(chunks))


# ---- A -------------------------------------------------------------------------------------------------------------
def test_pre_question():
    assert pre_question('The "Red" Hat (big)!?  ') == "the red hat big?"
    assert pre_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)


def test_noun_phrases_exclusions_and_cap():
    p = ParsedText((), ("The red hat", "top", "the brown coat rack", "the left", "the side", "the right", "Top"))
    assert noun_phrases(p, np_cap=True) == ["The red hat", "the brown coat rack", "Top"]
    many = ParsedText((), tuple(f"np{i}" for i in range(10)))
    assert len(noun_phrases(many, np_cap=True)) == 8 and len(noun_phrases(many, np_cap=False)) == 10
    assert attribute_questions(["The red hat"]) == ["the red hat?"]


def test_attribute_score_product_and_rounding():
    # 0.6/(0.6+0.2) = 0.75, 0.3/(0.3+0.1) = 0.75 -> 0.5625 ; P(yes), P(no) need not sum to 1
    assert attribute_score([(0.6, 0.2), (0.3, 0.1)], round_attribute=False) == pytest.approx(0.5625)
    assert attribute_score([(1.0, 2.0)], round_attribute=False) == pytest.approx(1 / 3)
    assert attribute_score([(1.0, 2.0)], round_attribute=True) == 0.3333
    assert attribute_score([(2.0, 1.0)], round_attribute=True) == 0.6667
    assert attribute_score([], round_attribute=True) == 1.0  # no noun phrase: every slot counts 1
    with pytest.raises(ValueError):
        attribute_score([(0.0, 0.0)], round_attribute=False)


def test_attribute_score_official_rounds_each_answer_then_multiplies_in_float32():
    # BLIP_vqa.py: answers "0.5000" and "0.3333" -> float32 product 0.16664999... -> "0.1666" (rounding only the
    # exact product 1/6 would give 0.1667)
    assert attribute_score([(1.0, 1.0), (1.0, 2.0)], round_attribute=True) == 0.1666
    # "0.5000" x "0.6667" = 0.33335 -> float32 0.33335000 -> "0.3334" (exact product 1/3 -> 0.3333)
    assert attribute_score([(1.0, 1.0), (2.0, 1.0)], round_attribute=True) == 0.3334
    assert attribute_score([(1.0, 1.0), (1.0, 2.0)], round_attribute=False) == pytest.approx(1 / 6)


# ---- S: objects and locality --------------------------------------------------------------------------------------
def test_extract_objects_official_rules():
    p = parsed("The/DET red/ADJ hat/NOUN was/AUX on/ADP top/NOUN of/ADP the/DET brown/ADJ coat/NOUN rack/NOUN ./PUNCT")
    assert extract_objects(p) == ("hat", "coat")  # compound noun -> its first token
    p = parsed("A/DET man/NOUN next/ADV to/ADP a/DET woman/NOUN")
    assert extract_objects(p) == ("person", "person")
    p = parsed("A/DET dog/NOUN near/ADP Paris/PROPN ./PUNCT")  # no NOUN after -> PROPN fallback
    assert extract_objects(p) == ("dog", "Paris")
    p = parsed("Anna/PROPN near/ADP the/DET tree/NOUN")  # PROPN before counts
    assert extract_objects(p) == ("Anna", "tree")
    p = parsed("A/DET cat/NOUN near/ADP a/DET dog/NOUN near/ADP a/DET box/NOUN")  # several prepositions
    assert extract_objects(p) == (None, None)
    p = parsed("A/DET cat/NOUN and/CCONJ a/DET dog/NOUN")
    assert extract_objects(p) == (None, None)
    p = parsed("A/DET cup/NOUN on/ADP the/DET left/NOUN of/ADP a/DET plate/NOUN")
    assert extract_objects(p) == ("cup", "plate")


def test_extract_objects_proper_noun_fallback_is_official():
    # official: the PROPN must end a proper-noun run and must not be the prompt's last token
    p = parsed("A/DET dog/NOUN next/ADV to/ADP Mickey/PROPN Mouse/PROPN ./PUNCT")
    assert extract_objects(p) == ("dog", "Mouse")
    p = parsed("A/DET dog/NOUN near/ADP Paris/PROPN")  # no period: Paris is the last token -> no pair
    assert extract_objects(p) == (None, None)
    p = parsed("A/DET dog/NOUN near/ADP Mickey/PROPN Mouse/PROPN")  # the run ends the prompt -> no pair
    assert extract_objects(p) == (None, None)
    p = parsed("A/DET dog/NOUN near/ADP New/PROPN York/PROPN and/CCONJ Paris/PROPN ./PUNCT")
    assert extract_objects(p) == ("dog", "York")  # the first run's last token


def test_find_locality_order():
    assert find_locality("a cat on the left of a dog near a tree") == "near"  # 'near' is searched first
    assert find_locality("a hat on the top of a rack") == "on the top of"
    assert find_locality("a hat on top of a rack") == "on top of"
    assert find_locality("a cat sleeping") is None
    assert find_locality("a cat Next to a dog") is None  # substring match is case-sensitive, as official


def test_spatial_frame_matches_torchvision_resize():
    import torch
    from torchvision.transforms import Resize
    for w, h in [(512, 512), (64, 64), (640, 480), (480, 640), (100, 300)]:
        out = Resize(size=479, max_size=480, antialias=False)(torch.zeros(1, h, w))
        assert spatial_frame(w, h) == (out.shape[2], out.shape[1])
    assert spatial_frame(512, 512) == (479, 479)


# ---- S: position rule ---------------------------------------------------------------------------------------------
def box_at(cx, cy, half=10):
    return (cx - half, cy - half, cx + half, cy + half)


def test_position_near_branches():
    b1 = box_at(100, 100)
    for loc in ("next to", "on side of", "near"):
        assert position_score(loc, b1, box_at(240, 100)) == 1.0  # |dx| = 140 < 150
        assert position_score(loc, b1, box_at(400, 200)) == 1.0  # |dx| = 300 but |dy| = 100 < 150 ("or")
        assert position_score(loc, b1, box_at(400, 300)) == pytest.approx(150 / 300)  # both >= 150
        assert position_score(loc, b1, box_at(250, 250)) == pytest.approx(1.0)  # 150 / 150


def test_position_left_right_branches():
    b1 = box_at(100, 100)
    far_right = box_at(300, 120)  # dx = 200 > |dy| = 20, IoU 0
    assert position_score("on the left of", b1, far_right) == 1.0
    assert position_score("on the right of", b1, far_right) == 0.0  # needs dx < 0
    assert position_score("on the right of", far_right, b1) == 1.0
    assert position_score("on the left of", b1, box_at(120, 300)) == 0.0  # |dy| > |dx|
    # overlapping: boxes (0,0,10,10) and (5,0,15,10): dx = 5, dy = 0, IoU = 50/150 = 1/3 -> 0.1 / (1/3) = 0.3
    a, b = (0, 0, 10, 10), (5, 0, 15, 10)
    assert box_iou(a, b) == pytest.approx(1 / 3)
    assert position_score("on the left of", a, b) == pytest.approx(0.3)
    assert position_score("on the right of", b, a) == pytest.approx(0.3)
    # IoU just under 0.1 still scores 1: (0,0,10,10) vs (9,0,19,10): IoU = 10/190
    assert position_score("on the left of", a, (9, 0, 19, 10)) == 1.0


def test_position_top_bottom_branches():
    upper, lower = box_at(100, 100), box_at(110, 300)
    assert position_score("on the top of", upper, lower) == 1.0  # obj1 above: dy > 0
    assert position_score("on the bottom of", upper, lower) == 0.0
    assert position_score("on the bottom of", lower, upper) == 1.0  # obj1 lower: dy < 0
    assert position_score("on the top of", upper, box_at(300, 110)) == 0.0  # |dx| > |dy|
    a, b = (0, 0, 10, 10), (0, 5, 10, 15)  # dy = 5, IoU 1/3
    assert position_score("on the top of", a, b) == pytest.approx(0.3)


def test_on_top_of_both_modes():
    upper, lower = box_at(100, 100), box_at(110, 300)
    assert position_score("on top of", upper, lower, on_top_of_zero=True) == 0.0
    assert position_score("on top of", upper, lower, on_top_of_zero=False) == 1.0
    assert position_score("on top of", lower, upper, on_top_of_zero=False) == 0.0
    assert position_score(None, upper, lower) == 0.0
    assert position_score("behind", upper, lower) == 0.0


# ---- S: per image, the floor ----------------------------------------------------------------------------------------
def test_spatial_score_combination_and_floor():
    dets = [Detection("dog", 0.9, box_at(100, 100)), Detection("cat", 0.8, box_at(300, 110)),
            Detection("cat", 0.6, box_at(50, 100))]
    s, d = spatial_score("dog", "cat", "on the left of", dets)
    assert s == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5)  # first "cat" detection (the 0.8 one)
    assert d["pos"] == 1.0
    s, d = spatial_score("dog", "cat", "on the right of", dets)  # pos 0 -> 0.425 < 0.5 -> 0
    assert s == 0.0 and d["unfloored"] == pytest.approx(0.425)
    s, d = spatial_score("dog", "horse", "on the left of", dets)  # one object: 0.25 * s -> floored
    assert s == 0.0 and d["unfloored"] == pytest.approx(0.225)
    s, d = spatial_score("horse", "cat", "near", dets)
    assert d["unfloored"] == pytest.approx(0.2)
    assert spatial_score("horse", "cow", "near", dets)[0] == 0.0
    assert spatial_score(None, None, None, dets)[0] == 0.0
    # exactly 0.5 is kept (the floor is "< 0.5")
    ones = [Detection("a", 1.0, box_at(0, 0)), Detection("b", 1.0, box_at(0, 0))]
    assert spatial_score("a", "b", "on top of", ones, OFFICIAL)[0] == 0.5


def test_same_label_objects():
    dets = [Detection("circle", 0.9, box_at(100, 100)), Detection("circle", 0.7, box_at(300, 100))]
    s, d = spatial_score("circle", "circle", "next to", dets, OFFICIAL)  # both take the first box: dx=dy=0
    assert d["s2"] == 0.9 and d["pos"] == 1.0
    s, d = spatial_score("circle", "circle", "on the left of", dets, OFFICIAL)
    assert s == 0.0 and d["pos"] == 0.0
    s, d = spatial_score("circle", "circle", "on the left of", dets, CORRECTED)  # second takes the next box
    assert d["s2"] == 0.7 and s == pytest.approx(0.25 * 0.9 + 0.25 * 0.7 + 0.5)


# ---- C ---------------------------------------------------------------------------------------------------------------
def test_strip_adjectives():
    p = parsed("The/DET red/ADJ hat/NOUN was/AUX on/ADP top/NOUN of/ADP the/DET brown/ADJ coat/NOUN rack/NOUN ./PUNCT")
    assert strip_adjectives(p) == "The hat was on top of the coat rack ."


# ---- type and T ----------------------------------------------------------------------------------------------------
def test_type_from_official_lists(tmp_path):
    (tmp_path / "s.txt").write_text("The red hat was on top of the brown coat rack.\n")
    (tmp_path / "a.txt").write_text("A brown dog chases a white cat. It is sunny.\n")
    lists = PromptTypeLists.from_files(tmp_path / "s.txt", tmp_path / "a.txt")
    assert lists.type_of("the red hat was on top of the brown coat rack.") == "spatial"
    assert lists.type_of("A brown dog chases a white cat. Something else.") == "action"  # first sentence only
    assert lists.type_of("A girl next to a horse, riding.") == "spatial_action"  # official "otherwise"
    strict = PromptTypeLists.from_prompts(["x."], ["y."], ["z."])
    with pytest.raises(KeyError, match="none of the type lists"):
        strict.type_of("w.")


def test_type_from_scene_graph():
    objs = [("circle", []), ("square", []), ("triangle", [])]
    assert prompt_type_from_graph(SceneGraph.from_triples(objs, [(0, "left of", 1), (1, "above", 2)])) == "spatial"
    assert prompt_type_from_graph(SceneGraph.from_triples(objs, [(0, "bigger than", 1)])) == "action"
    assert prompt_type_from_graph(SceneGraph.from_triples(objs, [(0, "left of", 1), (1, "bigger than", 2)])) \
        == "spatial_action"
    assert prompt_type_from_graph(SceneGraph.from_triples(objs, [])) == "action"
    assert prompt_type_from_graph(SceneGraph.from_triples(objs, [(0, "behind", 1)])) == "action"  # no 2-D rule


def test_type_heuristic():
    rp = RegexTextParser()
    for prompt, t in [("a cat next to a dog", "spatial"), ("a man riding a horse near a tree", "spatial_action"),
                      ("a man riding a horse", "action")]:
        assert prompt_type_heuristic(prompt, rp.parse(prompt)) == t


def test_three_in_one_per_type():
    assert three_in_one("spatial", a=0.8, s=0.6, c=None) == pytest.approx(0.7)
    assert three_in_one("action", a=0.8, s=None, c=0.3) == pytest.approx(0.55)
    assert three_in_one("spatial_action", a=0.8, s=0.6, c=0.3) == pytest.approx(1.7 / 3)


# ---- the reward end to end -----------------------------------------------------------------------------------------
HAT = "The red hat was on top of the brown coat rack."
HAT_PARSE = parsed("The/DET red/ADJ hat/NOUN was/AUX on/ADP top/NOUN of/ADP the/DET brown/ADJ coat/NOUN rack/NOUN "
                   "./PUNCT", ("The red hat", "top", "the brown coat rack"))


def hat_reward(config, lists):
    vqa = ScriptedVQA(probs={"the red hat?": (0.6, 0.2), "the brown coat rack?": (0.5, 0.5)})
    # 64x64 image; hat above the rack, no overlap (boxes are rescaled to the 479 px frame)
    det = ScriptedDetector([Detection("hat", 0.9, (10, 2, 30, 12)), Detection("coat", 0.8, (10, 30, 40, 60))])
    sim = ScriptedSimilarity({"The hat was on top of the coat rack .": 0.3})
    return CompBench3in1Reward(vqa, det, sim, ScriptedParser({HAT: HAT_PARSE}), config, lists), vqa, sim


def test_reward_prompt_spatial_on_top_of_both_modes():
    lists = PromptTypeLists.from_prompts([HAT], [])
    img = Image.new("RGB", (64, 64))
    reward, vqa, sim = hat_reward(OFFICIAL, lists)
    out = reward([img], [HAT])
    p = out.parts[0]
    assert p["compbench_3in1/A"] == 0.375  # 0.75 * 0.5
    assert [t for _, t in vqa.calls] == ["the red hat?", "the brown coat rack?"]
    assert p["compbench_3in1/S"] == 0.0  # "on top of" -> pos 0 -> 0.425 -> floored
    assert out.scores[0]["compbench_3in1"] == pytest.approx(0.375 / 2)
    assert p["compbench_3in1/type"] == "spatial" and p["compbench_3in1/type_source"] == "official-lists"
    assert p["compbench_3in1/C"] is None and sim.texts == []  # C is not computed for spatial prompts
    reward, _, _ = hat_reward(CORRECTED, lists)
    out = reward([img], [HAT])
    s = 0.25 * 0.9 + 0.25 * 0.8 + 0.5
    assert out.parts[0]["compbench_3in1/S"] == pytest.approx(s)
    assert out.scores[0]["compbench_3in1"] == pytest.approx((s + 0.375) / 2)
    assert out.provenance[0].flags["on_top_of_zero"] is False


def test_reward_prompt_types_select_components():
    img = Image.new("RGB", (64, 64))
    for lists, expected in [(PromptTypeLists.from_prompts([], [HAT]), (0.3 + 0.375) / 2),
                            (PromptTypeLists.from_prompts([], []), (0.375 + 0.0 + 0.3) / 3)]:
        reward, _, sim = hat_reward(OFFICIAL, lists)
        out = reward([img], [HAT])
        assert out.scores[0]["compbench_3in1"] == pytest.approx(expected)
        assert sim.texts == ["The hat was on top of the coat rack ."]


def test_reward_scene_graph_and_clipping():
    sg = SceneGraph.from_triples([("circle", ["red"]), ("square", ["blue"])], [(0, "left of", 1)])
    vqa = ScriptedVQA(probs={"red circle?": (0.9, 0.1), "blue square?": (0.8, 0.2)})
    det = ScriptedDetector(lambda image, queries: [Detection("circle", 0.9, (0, 20, 20, 40)),
                                                   Detection("square", 0.8, (40, 20, 60, 40))])
    reward = CompBench3in1Reward(vqa, det, ScriptedSimilarity(default=-0.9))
    out = reward([Image.new("RGB", (64, 64))], [sg])
    a = 0.9 * 0.8
    s = 0.25 * 0.9 + 0.25 * 0.8 + 0.5
    assert out.parts[0]["compbench_3in1/A"] == pytest.approx(a)
    assert out.parts[0]["compbench_3in1/S"] == pytest.approx(s)
    assert out.scores[0]["compbench_3in1"] == pytest.approx((a + s) / 2)
    # an action graph with a negative cosine: T < 0 is recorded, the component is clipped to 0
    sg2 = SceneGraph.from_triples([("circle", ["red"]), ("square", ["blue"])], [(0, "bigger than", 1)])
    sim = ScriptedSimilarity(default=-0.9)
    out = CompBench3in1Reward(vqa, det, sim)([Image.new("RGB", (64, 64))], [sg2])
    assert out.parts[0]["compbench_3in1/T"] == pytest.approx((a - 0.9) / 2)
    assert out.scores[0]["compbench_3in1"] == 0.0
    assert sim.texts == ["circle bigger than square"]  # attributes removed
    # shared labels are detected by phrase
    sg3 = SceneGraph.from_triples([("circle", ["red"]), ("circle", ["blue"])], [(0, "above", 1)])
    seen = []
    det3 = ScriptedDetector(lambda image, queries: seen.extend(queries) or [])
    CompBench3in1Reward(ScriptedVQA(), det3)([Image.new("RGB", (64, 64))], [sg3])
    assert seen == ["red circle", "blue circle"]
    with pytest.raises(ValueError, match="needs a similarity backend"):
        CompBench3in1Reward(vqa, det)([Image.new("RGB", (64, 64))], [sg2])


def test_sample_names_and_aggregation():
    from sgalign.rewards.compbench import benchmark_3in1, parse_sample_name, per_prompt_means
    name = "The red hat was on top of the brown coat rack._000012.png"
    assert parse_sample_name(name) == ("The red hat was on top of the brown coat rack.", 12)
    assert parse_sample_name(name, faithful=True) == ("The red hat was on top of the brown coat rack.", 12)
    odd = "a snake_case sign_000003.png"
    assert parse_sample_name(odd) == ("a snake_case sign", 3)
    assert parse_sample_name(odd, faithful=True) == ("a snake", 3)  # the official cut
    assert benchmark_3in1([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert per_prompt_means([("a", 0.2), ("b", 1.0), ("a", 0.4)]) == pytest.approx({"a": 0.3, "b": 1.0})


def test_rule_applies_in_detector_frame():
    """A 64x64 image is scored in the official 479x479 frame: centres 30 px apart become 224.53 px, so "next to"
    gives 150 / 224.53, not 1 (as it would in raw pixels)."""
    from sgalign.rewards.compbench import to_frame
    d = to_frame(Detection("x", 1.0, (0, 0, 64, 32)), 64, 64)
    assert d.box == pytest.approx((0, 0, 479, 239.5))
    sg = SceneGraph.from_triples([("circle", []), ("square", [])], [(0, "next to", 1)])
    det = ScriptedDetector([Detection("circle", 1.0, (0, 0, 10, 10)), Detection("square", 1.0, (30, 30, 40, 40))])
    out = CompBench3in1Reward(ScriptedVQA(default_probs=(1.0, 0.0)), det)([Image.new("RGB", (64, 64))], [sg])
    pos = 150 / (30 * 479 / 64)
    assert out.parts[0]["compbench_3in1/spatial"][0]["pos"] == pytest.approx(pos)
    assert out.parts[0]["compbench_3in1/S"] == pytest.approx(0.5 + pos / 2)

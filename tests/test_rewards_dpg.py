"""DPG-Bench logic: worked examples for the reader, the dependency rule, tiles and aggregation."""
import csv

import pytest
from PIL import Image

from sgalign.rewards.backends import ScriptedVQA
from sgalign.rewards.dpg_bench import (
    DependencyError, DPGConfig, DPGFailure, DPGQuestion, DPGReward, DSGFormatError, QuestionSet, apply_dependencies,
    benchmark, crop_tiles, exact_yes, questions_from_scene_graph, read_dsg_csv, score_answers, score_folder_images,
    tile_boxes)
from sgalign.scene_graph import SceneGraph

COLUMNS = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
           "tuple", "question_natural_language"]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for item, pid, dep, tup, q in rows:
            w.writerow([item, f"prompt of {item}", "", pid, dep, "", "", tup, q])
    return path


ROWS = [
    ("partiprompts97", 1, "0", "entity - whole (man)", "Is there a man?"),
    ("partiprompts97", 2, "1", "attribute - other (man, invisible)", "Is the man invisible?"),
    ("partiprompts97", 3, "0", "entity - whole (couch)", "Is there a couch?"),
    ("bench1", 1, "0", "entity - whole (bench)", "Is there a bench?"),
    ("bench1", 2, "0", "entity - whole (trees)", "Are there trees?"),
    ("bench1", 3, "1,2", "relation - spatial (bench, trees, near)", "Is the bench near the trees?"),
]


def q(qid, parents, tup="entity - whole (x)"):
    return DPGQuestion(qid, f"q{qid}?", tuple(parents), tup)


# ---- reader ------------------------------------------------------------------------------------------------------
def test_reader_fields_and_order(tmp_path):
    sets = read_dsg_csv(write_csv(tmp_path / "dpg.csv", ROWS))
    assert list(sets) == ["partiprompts97", "bench1"]
    b = sets["bench1"]
    assert [x.qid for x in b.questions] == [1, 2, 3]
    assert b.questions[2].parents == (1, 2)
    assert b.questions[2].question == "Is the bench near the trees?"
    assert b.questions[2].category_l2 == "relation - spatial" and b.questions[2].category_l1 == "relation"
    assert b.prompt == "prompt of bench1"


def test_reader_first_row_skip_and_its_keyerror(tmp_path):
    """Official loader skips the first data row; partiprompts97's question 2 then depends on a missing question 1,
    which fails at scoring (KeyError) and the image vanishes from the benchmark mean (ELLA #61)."""
    path = write_csv(tmp_path / "dpg.csv", ROWS)
    with pytest.raises(DSGFormatError, match="dependency 1 is not a proposition"):
        read_dsg_csv(path, skip_first_row=True)  # validating reader names the broken item
    sets = read_dsg_csv(path, skip_first_row=True, validate=False)
    assert [x.qid for x in sets["partiprompts97"].questions] == [2, 3]
    vqa = ScriptedVQA(default_answer="yes")
    img = Image.new("RGB", (8, 8))
    cfg = DPGConfig.official()
    res = score_folder_images([("partiprompts97", img), ("bench1", img)], sets, vqa, config=cfg)
    assert isinstance(res[0], DPGFailure) and "depends on 1" in res[0].reason
    bench = benchmark(res, sets, cfg)
    assert bench.score == 100.0 and bench.n_scored == 1 and len(bench.failed) == 1  # dropped, not 0
    corrected = benchmark(res, sets, DPGConfig())
    assert corrected.score == 50.0  # the failure counts as 0


def test_reader_errors_name_file_row_field(tmp_path):
    bad = write_csv(tmp_path / "a.csv", [("x", "one", "0", "entity - whole (a)", "Is there a?")])
    with pytest.raises(DSGFormatError, match=r"a\.csv, data row 1: field 'proposition_id'"):
        read_dsg_csv(bad)
    bad = write_csv(tmp_path / "b.csv", [("x", 1, "0;2", "entity - whole (a)", "Is there a?")])
    with pytest.raises(DSGFormatError, match="field 'dependency'"):
        read_dsg_csv(bad)
    (tmp_path / "c.csv").write_text("item_id,proposition_id,tuple\nx,1,t\n")
    with pytest.raises(DSGFormatError, match="missing column"):
        read_dsg_csv(tmp_path / "c.csv")
    dup = write_csv(tmp_path / "d.csv", [("x", 1, "0", "t", "a?"), ("x", 1, "0", "t", "b?")])
    with pytest.raises(DSGFormatError, match="duplicate proposition_id 1"):
        read_dsg_csv(dup)
    assert [x.question for x in read_dsg_csv(dup, validate=False)["x"].questions] == ["b?"]


def test_reader_noncontiguous_item(tmp_path):
    rows = [("x", 1, "0", "t", "a?"), ("y", 1, "0", "t", "b?"), ("x", 2, "0", "t", "c?")]
    path = write_csv(tmp_path / "nc.csv", rows)
    with pytest.raises(DSGFormatError, match="appears again"):
        read_dsg_csv(path)
    # official: the later block replaces the earlier one
    assert [x.qid for x in read_dsg_csv(path, validate=False)["x"].questions] == [2]


# ---- answers and dependencies ------------------------------------------------------------------------------------
def test_exact_yes():
    assert exact_yes("yes") == 1.0
    for a in ("Yes", "yes.", "yeah", " yes", "yes, it is", "no"):
        assert exact_yes(a) == 0.0


def test_dependency_chain_in_order():
    qs = [q(1, [0]), q(2, [1]), q(3, [2]), q(4, [0])]
    raw = {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    for file_order in (True, False):
        adj, valid = apply_dependencies(qs, raw, file_order)
        assert adj == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0}  # the zero passes down the whole chain
        assert valid == {1: True, 2: False, 3: False, 4: True}


def test_parent_listed_after_child():
    """File order 1, 3, 2 with 3 -> 2 -> 1. Answers: 1 no, 2 yes, 3 yes.
    Official in-place pass: at 3, parent 2 still holds its raw 1 -> 3 kept; then 2 is zeroed (parent 1 is 0).
    Tile = (0 + 1 + 0) / 3. Corrected: the zero reaches 3 too -> 0."""
    qs = [q(1, [0]), q(3, [2]), q(2, [1])]
    raw = {1: 0.0, 2: 1.0, 3: 1.0}
    adj, _ = apply_dependencies(qs, raw, file_order=True)
    assert adj == {1: 0.0, 3: 1.0, 2: 0.0}
    adj, _ = apply_dependencies(qs, raw, file_order=False)
    assert adj == {1: 0.0, 3: 0.0, 2: 0.0}
    qset = QuestionSet("x", qs)
    ans = {1: "no", 2: "yes", 3: "yes"}
    assert score_answers(qset, [ans], DPGConfig.official()).score == pytest.approx(1 / 3)
    assert score_answers(qset, [ans], DPGConfig()).score == 0.0
    # a parent listed after its child still acts through its own raw answer
    ans2 = {1: "yes", 2: "no", 3: "yes"}
    assert score_answers(qset, [ans2], DPGConfig.official()).adjusted[0] == {1: 1.0, 3: 0.0, 2: 0.0}


def test_unknown_parent_raises():
    with pytest.raises(DependencyError, match="depends on 7"):
        apply_dependencies([q(1, [7])], {1: 1.0}, file_order=True)


# ---- tiles -------------------------------------------------------------------------------------------------------
def grid(colors, r=8):
    img = Image.new("RGB", (2 * r, 2 * r))
    for (x, y), c in zip([(0, 0), (r, 0), (0, r), (r, r)], colors):
        img.paste(Image.new("RGB", (r, r), c), (x, y))
    return img


def red_vqa():
    """Answers "yes" to everything on a red tile, "no" elsewhere; records the tile colours in call order."""
    seen = []

    def answer(image, query):
        seen.append(image.getpixel((0, 0)))
        return "yes" if image.getpixel((0, 0)) == (255, 0, 0) else "no"
    return ScriptedVQA(answers=answer), seen


def test_tile_boxes_order():
    assert tile_boxes(10, 4) == [(0, 0, 10, 10), (10, 0, 20, 10), (0, 10, 10, 20), (10, 10, 20, 20)]
    assert tile_boxes(10, 2) == [(0, 0, 10, 10), (10, 0, 20, 10)]
    with pytest.raises(ValueError):
        tile_boxes(10, 5)


@pytest.mark.parametrize("pic_num,expected", [(1, 1.0), (2, 0.5), (3, 2 / 3), (4, 0.5)])
def test_pic_num_tiles(pic_num, expected):
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    img = grid([red, blue, red, green])  # TL, TR, BL, BR
    qset = QuestionSet("g", [q(1, [0]), q(2, [1])])
    vqa, seen = red_vqa()
    reward = DPGReward(vqa, pic_num=pic_num, resolution=8 if pic_num > 1 else None,
                       question_sets={"g": qset})
    if pic_num == 1:  # a single image: R = its side; use the red top-left tile alone
        img = img.crop((0, 0, 8, 8))
    out = reward([img], ["g"])
    assert out.scores[0]["dpg"] == pytest.approx(expected)
    assert len(out.parts[0]["dpg/tile_scores"]) == pic_num
    assert seen[::2] == [red, blue, red, green][:pic_num]  # TL, TR, BL, BR order, 2 questions per tile


def test_crop_outside_image():
    img = Image.new("RGB", (16, 16), (255, 0, 0))
    with pytest.raises(ValueError, match="needs an image of at least 20x20"):
        crop_tiles(img, 4, resolution=10)
    tiles = crop_tiles(img, 4, resolution=10, lenient=True)  # official: PIL pads with black
    assert tiles[3].getpixel((9, 9)) == (0, 0, 0) and tiles[3].getpixel((0, 0)) == (255, 0, 0)


# ---- aggregation -------------------------------------------------------------------------------------------------
def test_benchmark_and_categories():
    """Two tiles. Tile 1: entity yes, attribute yes. Tile 2: entity no, attribute yes (zeroed by dependency).
    S = (1 + 0) / 2 = 0.5 -> benchmark 50. Official categories: last tile raw -> entity 0, attribute 100.
    Corrected: mean over tiles of adjusted -> entity 50, attribute 50."""
    qset = QuestionSet("i", [DPGQuestion(1, "Is there a cat?", (0,), "entity - whole (cat)"),
                             DPGQuestion(2, "Is the cat black?", (1,), "attribute - color (cat, black)")])
    res = score_answers(qset, [{1: "yes", 2: "yes"}, {1: "no", 2: "yes"}])
    assert res.tile_scores == [1.0, 0.0] and res.score == 0.5
    off = benchmark([res], {"i": qset}, DPGConfig.official())
    assert off.score == 50.0
    assert off.categories_l1 == {"entity": 0.0, "attribute": 100.0}
    assert off.categories_l2 == {"entity - whole": 0.0, "attribute - color": 100.0}
    cor = benchmark([res], {"i": qset}, DPGConfig())
    assert cor.categories_l1 == {"entity": 50.0, "attribute": 50.0}
    assert off.flags["last_tile_categories"] and not cor.flags["last_tile_categories"]


# ---- scene graphs --------------------------------------------------------------------------------------------------
def test_questions_from_scene_graph():
    sg = SceneGraph.from_triples([("circle", ["red", "large"]), ("apple", [])],
                                 [(0, "left of", 1), (1, "bigger than", 0)])
    qs = questions_from_scene_graph(sg).questions
    assert [(x.qid, x.question, x.parents) for x in qs] == [
        (1, "Is there a circle?", (0,)),
        (2, "Is there an apple?", (0,)),
        (3, "Is the circle red?", (1,)),
        (4, "Is the circle large?", (1,)),
        (5, "Is the circle left of the apple?", (1, 2)),
        (6, "Is the apple bigger than the circle?", (2, 1)),
    ]
    assert [x.tuple for x in qs][2:] == ["attribute - color (circle, red)", "attribute - size (circle, large)",
                                         "relation - spatial (circle, apple, left of)",
                                         "relation - non-spatial (apple, circle, bigger than)"]
    assert qs[4].item_ids == (0, 1)


def test_scene_graph_shared_labels_use_phrases():
    sg = SceneGraph.from_triples([("circle", ["red"]), ("circle", ["blue"])], [(0, "above", 1)])
    texts = [x.question for x in questions_from_scene_graph(sg).questions]
    assert texts == ["Is there a red circle?", "Is there a blue circle?", "Is the red circle red?",
                     "Is the blue circle blue?", "Is the red circle above the blue circle?"]


def test_dpg_reward_on_scene_graph_with_provenance():
    sg = SceneGraph.from_triples([("circle", ["red"]), ("square", [])], [(0, "left of", 1)])
    vqa = ScriptedVQA({"Is there a circle?": "yes", "Is there a square?": "no", "Is the circle red?": "no",
                       "Is the circle left of the square?": "yes"})
    out = DPGReward(vqa)([Image.new("RGB", (8, 8))], [sg])
    # raw 1,0,0,1; relation zeroed because the square entity is 0 -> 1/4
    assert out.scores[0] == {"dpg": 0.25}
    prov = out.provenance[0].to_dict()
    assert prov["any_fallback"] is True and prov["backends"]["vqa"]["kind"] == "scripted"
    assert prov["flags"] == DPGConfig().flags()
    with pytest.raises(KeyError, match="needs a DSG question file"):
        DPGReward(vqa)([Image.new("RGB", (8, 8))], ["a prompt"])

"""SG-IoU / Entity-IoU / Relation-IoU worked examples, both modes, incl. LAION-SG's desert-house demo graph.

The demo (test_iou.py) has 5 GT triples of bare labels. Three are in the anchor notes: (house, near, water),
(house, made_of, stone), (mountain, behind, house). The other two, (house, on, sand) and (cactus, next_to, house),
are invented here (plausible for a desert house); the original's are not reproduced.
"""
import json

import pytest

from sgalign.evaluation import (ExtractedGraph, compare_sg_iou, evaluate_sg_iou, extracted_sets, ground_truth_sets,
                                jaccard, normalize_text, parse_reply, sg_iou_scores)
from sgalign.scene_graph import SceneGraph

OBJECTS = ["house", "water", "stone", "mountain", "sand", "cactus"]
TRIPLES = [(0, "near", 1), (0, "made_of", 2), (3, "behind", 0), (0, "on", 4), (5, "next_to", 0)]


def desert_house(isolated: tuple[str, ...] = ()) -> SceneGraph:
    return SceneGraph.from_triples([(o, []) for o in [*OBJECTS, *isolated]], TRIPLES)


# A GPT-style reply: a duplicate triple, "House" capitalised, " mountain" with a stray space, cactus "near" instead
# of "next_to", no "stone"/"sand" in object_list but an off-vocabulary "sky", and a predicate_list missing "on".
REPLY = json.dumps({
    "scene_graph": [["house", "near", "water"], ["house", "made_of", "stone"], [" mountain", "behind", "house"],
                    ["House", "on", "sand"], ["cactus", "near", "house"], ["house", "near", "water"]],
    "object_list": ["house", "water", "mountain", "cactus", "sky"],
    "predicate_list": ["near", "made_of", "behind"],
})


def test_normalize_text():
    assert normalize_text("  Made  Of \n") == "made of"
    assert normalize_text("House") == "house"
    assert normalize_text("made_of") == "made_of"  # underscores are not touched
    assert normalize_text("   ") == ""


def test_jaccard_basic_and_empty_union():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(2 / 4)
    assert jaccard([1, 1, 2], [2, 2, 1]) == 1.0  # sets: duplicates ignored
    assert jaccard([], []) == 0.0
    assert jaccard({1}, set()) == 0.0


def test_desert_house_paper_mode():
    gt, pred = desert_house(), parse_reply(REPLY)
    assert pred.ok and len(pred.triples) == 5  # the duplicate triple is dropped
    s = sg_iou_scores(gt, pred, mode="paper")
    # triples: exact matches {house-near-water, house-made_of-stone} = 2; union 5 + 5 - 2 = 8
    assert s.sg_iou == pytest.approx(2 / 8)
    # entities: object_list {house, water, mountain, cactus, sky} vs GT {house, water, stone, mountain, sand, cactus}
    assert s.entity_iou == pytest.approx(4 / 7)
    # relations: predicate_list {near, made_of, behind} vs GT {near, made_of, behind, on, next_to}
    assert s.relation_iou == pytest.approx(3 / 5)


def test_desert_house_normalized_mode():
    s = sg_iou_scores(desert_house(), parse_reply(REPLY))  # default mode
    # "House"/" mountain" now match: 4 common triples, union 5 + 5 - 4 = 6
    assert s.sg_iou == pytest.approx(4 / 6)
    # entities from triples {house, water, stone, mountain, sand, cactus} + object_list {sky}: 6 of 7
    assert s.entity_iou == pytest.approx(6 / 7)
    # relations from the triples {near, made_of, behind, on} (predicate_list ignored): 4 of 5
    assert s.relation_iou == pytest.approx(4 / 5)


def test_isolated_items_count_only_in_normalized_mode():
    gt, pred = desert_house(isolated=("sun",)), parse_reply(REPLY)
    assert "sun" not in ground_truth_sets(gt, "paper").entities
    assert "sun" in ground_truth_sets(gt, "normalized").entities
    assert sg_iou_scores(gt, pred, "paper").entity_iou == pytest.approx(4 / 7)  # unchanged
    assert sg_iou_scores(gt, pred, "normalized").entity_iou == pytest.approx(6 / 8)  # sun joins the union
    assert sg_iou_scores(gt, pred, "normalized").sg_iou == pytest.approx(4 / 6)  # triples unaffected


def test_perfect_extraction_scores_one_in_both_modes():
    gt = desert_house()
    perfect = ExtractedGraph(triples=gt.label_triples(), object_list=OBJECTS,
                             predicate_list=["near", "made_of", "behind", "on", "next_to"])
    for mode in ("paper", "normalized"):
        assert sg_iou_scores(gt, perfect, mode).to_dict() == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}


def test_paper_mode_trusts_self_reported_lists_normalized_does_not():
    gt = desert_house()
    # lists claim everything, triples are empty
    liar = ExtractedGraph(triples=[], object_list=OBJECTS,
                          predicate_list=["near", "made_of", "behind", "on", "next_to"])
    assert sg_iou_scores(gt, liar, "paper").to_dict() == {"sg_iou": 0.0, "entity_iou": 1.0, "relation_iou": 1.0}
    normalized = sg_iou_scores(gt, liar, "normalized")
    assert normalized.entity_iou == 1.0  # object_list still counts as entities ...
    assert normalized.relation_iou == 0.0  # ... but relations come from triples only
    assert extracted_sets(liar, "normalized").relations == frozenset()


def test_empty_graphs_and_blank_strings():
    empty_gt = SceneGraph.from_triples([], [])
    assert sg_iou_scores(empty_gt, ExtractedGraph()).to_dict() == {"sg_iou": 0.0, "entity_iou": 0.0,
                                                                   "relation_iou": 0.0}
    blank = ExtractedGraph(triples=[("house", " ", "water")], object_list=["  "])
    sets = extracted_sets(blank, "normalized")
    assert sets.triples == frozenset() and sets.entities == frozenset() and sets.relations == frozenset()


def test_failed_extraction_zero_or_skip():
    gts = [desert_house(), desert_house()]
    good = ExtractedGraph(triples=desert_house().label_triples(), object_list=OBJECTS)
    bad = parse_reply("I cannot help with that.")
    assert bad.status == "parse_error"
    zero = evaluate_sg_iou(gts, [good, bad], n_resamples=200)
    assert zero.n_failed == 1 and zero.mean["sg_iou"] == pytest.approx(0.5)
    assert zero.per_image[1].to_dict() == {"sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0}
    skip = evaluate_sg_iou(gts, [good, bad], failures="skip", n_resamples=200)
    assert skip.n_failed == 1 and skip.per_image[1] is None and skip.mean["sg_iou"] == 1.0
    d = skip.to_dict()
    assert d["status_counts"] == {"ok": 1, "parse_error": 1} and d["mode"] == "normalized"
    with pytest.raises(ValueError, match="all 1 extractions failed"):
        evaluate_sg_iou(gts[:1], [bad], failures="skip")


def test_average_and_bootstrap_interval():
    gts = [desert_house(), desert_house()]
    perfect = ExtractedGraph(triples=desert_house().label_triples())
    rep = evaluate_sg_iou(gts, [parse_reply(REPLY), perfect], n_resamples=2000, seed=3)
    assert rep.mean["sg_iou"] == pytest.approx((4 / 6 + 1) / 2)
    ci = rep.ci["sg_iou"]
    # two images: resample means are 2/3, 5/6 or 1 with prob 1/4, 1/2, 1/4 -> 2.5 % / 97.5 % quantiles hit the ends
    assert ci.low == pytest.approx(4 / 6) and ci.high == pytest.approx(1.0)
    assert ci.level == 0.95 and ci.n_resamples == 2000 and ci.seed == 3
    again = evaluate_sg_iou(gts, [parse_reply(REPLY), perfect], n_resamples=2000, seed=3)
    assert again.to_dict() == rep.to_dict()
    paper = evaluate_sg_iou(gts, [parse_reply(REPLY), perfect], mode="paper", n_resamples=100)
    assert paper.mean["sg_iou"] == pytest.approx((2 / 8 + 1) / 2)


def test_compare_reports_paired_difference():
    gts = [desert_house()] * 3
    full = desert_house().label_triples()
    base = [ExtractedGraph(triples=full[:k]) for k in (1, 2, 3)]  # sg_iou 1/5, 2/5, 3/5
    better = [ExtractedGraph(triples=full[:k]) for k in (2, 3, 4)]  # each image +1/5
    a = evaluate_sg_iou(gts, better, n_resamples=300)
    b = evaluate_sg_iou(gts, base, n_resamples=300)
    diff = compare_sg_iou(a, b, n_resamples=300)
    # the same +0.2 on every image: the paired interval collapses onto 0.2 and excludes 0
    assert diff["sg_iou"].estimate == pytest.approx(0.2)
    assert diff["sg_iou"].low == pytest.approx(0.2) and diff["sg_iou"].high == pytest.approx(0.2)
    assert diff["sg_iou"].excludes(0.0)
    with pytest.raises(ValueError, match="different modes"):
        compare_sg_iou(a, evaluate_sg_iou(gts, base, mode="paper", n_resamples=10))


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode must be one of"):
        sg_iou_scores(desert_house(), ExtractedGraph(), mode="fuzzy")
    with pytest.raises(ValueError, match="2 ground-truth graphs but 1 extractions"):
        evaluate_sg_iou([desert_house()] * 2, [ExtractedGraph()])
    with pytest.raises(ValueError, match="status must be one of"):
        ExtractedGraph(status="weird")


def test_graph_resampling_keeps_seeds_together_and_is_recorded():
    # 30 graphs x 3 seeds: a graph's seeds are all perfect or all empty, so the seeds carry no extra information
    gts, preds, groups = [], [], []
    perfect = ExtractedGraph(triples=desert_house().label_triples(), object_list=OBJECTS)
    for g in range(30):
        for _ in range(3):
            gts.append(desert_house())
            preds.append(perfect if g % 3 else ExtractedGraph())
            groups.append(g)
    by_image = evaluate_sg_iou(gts, preds, n_resamples=1000, seed=0)
    by_graph = evaluate_sg_iou(gts, preds, n_resamples=1000, seed=0, groups=groups)
    assert by_graph.mean == by_image.mean
    w_img = by_image.ci["sg_iou"].high - by_image.ci["sg_iou"].low
    w_graph = by_graph.ci["sg_iou"].high - by_graph.ci["sg_iou"].low
    assert w_graph / w_img == pytest.approx(3 ** 0.5, rel=0.2)
    d = by_graph.to_dict()
    assert d["resampling_unit"] == "graph (all seeds together)" and d["ci"]["sg_iou"]["n"] == 30
    assert by_image.to_dict()["resampling_unit"] == "image" and by_image.ci["sg_iou"].n == 90
    # the paired difference resamples the same graphs on both sides
    base = evaluate_sg_iou(gts, [ExtractedGraph()] * 90, n_resamples=1000, seed=0, groups=groups)
    diff = compare_sg_iou(by_graph, base, n_resamples=1000, seed=0)
    assert diff["sg_iou"].n == 30 and diff["sg_iou"].unit == "graph (all seeds together)"
    with pytest.raises(ValueError, match="group their images differently"):
        compare_sg_iou(by_image, base)


def test_paper_mode_is_exactly_one_on_ground_truth_world_renders():
    # LAION-SG's GPT could only name the GT triples' items, so isolated items never reach its object_list; the
    # oracle in paper mode follows the same rule and perfect images score exactly 1.0 (not 0.87-0.95)
    from sgalign.evaluation import GraphParserExtractor
    from sgalign.evaluation.extractors import ParsedImages
    from sgalign.world import WorldOracle, render_array, sample_split

    scenes = sample_split("test", 8, seed=0)
    gts = [s.graph() for s in scenes]
    in_triples = [{x for s, _, o in g.triples() for x in (s, o)} for g in gts]
    assert all(g.label_triples() for g in gts)  # every graph has a relation (else every IoU is 0 by definition)
    assert any(len(g.items) > len(t) for g, t in zip(gts, in_triples))  # some have isolated items
    parsed = ParsedImages(WorldOracle(), render_array(scenes))
    for gran in ("phrase", "label"):
        preds = [GraphParserExtractor(parsed, gran, paper=True).extract(i, g) for i, g in enumerate(gts)]
        rep = evaluate_sg_iou(gts, preds, mode="paper", granularity=gran, n_resamples=10)
        assert rep.mean == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}
        everything = [GraphParserExtractor(parsed, gran).extract(i, g) for i, g in enumerate(gts)]
        assert evaluate_sg_iou(gts, everything, mode="paper", granularity=gran, n_resamples=10).mean[
            "entity_iou"] < 1.0  # the old behaviour: isolated items reported
        assert evaluate_sg_iou(gts, everything, granularity=gran, n_resamples=10).mean == rep.mean  # normalized


def test_paper_mode_keeps_malformed_entries_in_the_union():
    # test_iou.py builds set(tuple(t) for t in scene_graph) and set(object_list): a 2-item triple or a number is
    # kept, matches nothing and enlarges the union; normalized mode drops them
    gt = SceneGraph.from_triples([("house", []), ("water", [])], [(0, "near", 1)])
    pred = parse_reply(json.dumps({"scene_graph": [["house", "near", "water"], ["house", "near"], ["house", "near"]],
                                   "object_list": ["house", "water", 7], "predicate_list": ["near", None]}))
    assert pred.ok and pred.n_dropped == 4
    paper = sg_iou_scores(gt, pred, mode="paper")
    assert (paper.sg_iou, paper.entity_iou, paper.relation_iou) == (1 / 2, 2 / 3, 1 / 2)
    assert sg_iou_scores(gt, pred).to_dict() == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}
    assert ExtractedGraph.from_dict(pred.to_dict()).malformed == pred.malformed  # survives the cache


def test_chat_paper_mode_needs_the_paper_vocabulary():
    from sgalign.config import ConfigError
    from sgalign.evaluation.protocol import load_protocol

    base = ["compositional.extractor=chat", "compositional.granularities=[label]", "compositional.iou_modes=[paper]"]
    with pytest.raises(ConfigError, match="chat.paper=true"):
        load_protocol(None, base)
    assert load_protocol(None, [*base, "compositional.chat.paper=true"]).compositional.chat.paper

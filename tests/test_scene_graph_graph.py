import json

import pytest
import torch

from helpers import CARD
from sgalign.scene_graph import SceneGraph, load_split, phrase_of


@pytest.fixture(scope="module")
def card_sg() -> SceneGraph:
    return SceneGraph.from_record(load_split(CARD).records[0])


def test_phrase_form():
    assert phrase_of("snow", ["white", "cold"]) == "white cold snow"
    assert phrase_of("snow", []) == "snow"
    # LAION-SG's loader always inserts the separator: faithful keeps its leading space
    assert phrase_of("snow", [], faithful=True) == " snow"
    assert phrase_of("snow", ["white"], faithful=True) == "white snow"


def test_card_triples_isolated_and_serialisation(card_sg):
    assert card_sg.triples() == [
        ("white cold snow", "adjacent to", "reflective calm river"),
        ("leafless slender trees", "growing near", "reflective calm river"),
        ("leafless slender trees", "growing near", "reflective calm river"),
    ]
    assert [it.item_id for it in card_sg.isolated_items] == [0]
    assert card_sg.serialize() == (
        "white cold snow adjacent to reflective calm river "
        "leafless slender trees growing near reflective calm river "
        "leafless slender trees growing near reflective calm river "
        "rocky tall mountains ")
    assert card_sg.label_triples()[0] == ("snow", "adjacent to", "river")


def test_serialisation_of_attribute_free_items_faithful_vs_default():
    sg = SceneGraph.from_triples([("dog", []), ("ball", ["red"]), ("cat", [])], [(0, "chasing", 1)])
    assert sg.serialize() == "dog chasing red ball cat "
    assert sg.serialize(faithful=True) == " dog chasing red ball  cat "


def test_record_round_trip(card_sg):
    rec = card_sg.to_record(img_id="482027")
    again = SceneGraph.from_record(rec)
    assert again == card_sg


def test_invalid_graph_is_refused():
    with pytest.raises(ValueError, match="unknown item_id 5"):
        SceneGraph.from_triples([("dog", [])], [(0, "near", 5)])


def test_networkx_view(card_sg):
    g = card_sg.to_networkx()
    assert g.number_of_nodes() == 5 and g.number_of_edges() == 3
    assert g.nodes[3]["phrase"] == "white cold snow"
    assert sorted(d["relation"] for _, _, d in g.edges(data=True)) == ["adjacent to", "growing near", "growing near"]
    assert g.degree(0) == 0  # isolated item kept as a node


def test_pyg_object_level(card_sg):
    data = card_sg.to_pyg()
    assert data.num_nodes == 5
    assert data.edge_index.shape == (2, 3) and data.edge_index.dtype == torch.long
    assert data.edge_index.tolist() == [[3, 1, 2], [4, 4, 4]]  # river is one shared node
    assert data.node_text[4] == "reflective calm river" and data.node_label[0] == "mountains"
    assert data.edge_text == ["adjacent to", "growing near", "growing near"]
    assert data.item_ids.tolist() == [0, 1, 2, 3, 4]
    empty = SceneGraph.from_triples([("dog", [])], []).to_pyg()
    assert empty.edge_index.shape == (2, 0) and empty.num_nodes == 1


def test_swapped_reverses_every_relation_and_keeps_the_rest(card_sg):
    sw = card_sg.swapped()
    assert sw.items == card_sg.items and len(sw.relations) == len(card_sg.relations) > 0
    assert [(r.object, r.predicate, r.subject, r.triple_id) for r in sw.relations] == \
        [(r.subject, r.predicate, r.object, r.triple_id) for r in card_sg.relations]
    assert sw.triples() == [(o, p, s) for s, p, o in card_sg.triples()]
    assert sw.swapped().triples() == card_sg.triples()  # an involution
    assert card_sg.relations[0].subject != sw.relations[0].subject  # the original is untouched

import pytest

from sgalign.scene_graph import CLIP_VOCAB_SIZE, SceneGraph, build_token_graph, clip_tokenizer, load_split
from helpers import CARD


class WordTokenizer:
    """Whitespace tokenizer with HF's call convention (BOS=1, EOS=2), for hand-checkable graphs."""

    def __init__(self) -> None:
        self.vocab = {"<bos>": 1, "<eos>": 2}

    def __call__(self, text, padding=False, truncation=True, max_length=77):
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]
        return {"input_ids": [1, *ids[: max_length - 2], 2]}


@pytest.fixture(scope="module")
def clip():
    return clip_tokenizer()


def test_token_graph_by_hand():
    tok = WordTokenizer()
    sg = SceneGraph.from_triples([("dog", ["big", "brown"]), ("ball", ["red"]), ("cat", [])],
                                 [(0, "chasing", 1), (1, "next to", 0)])
    tg = build_token_graph(sg, tok)
    v = tok.vocab
    # triple 0: big brown dog | red ball ; triple 1: red ball | big brown dog (fresh nodes, never shared)
    assert tg.node_token_ids == [v["big"], v["brown"], v["dog"], v["red"], v["ball"],
                                 v["red"], v["ball"], v["big"], v["brown"], v["dog"]]
    dash = v["-"]
    assert tg.attribute_token_id == dash
    assert tg.pred_token_ids == [dash, dash, dash, v["chasing"], dash, dash, dash, v["next"], v["to"]]
    assert tg.edges == [(0, 2), (1, 2), (3, 4), (2, 4), (5, 6), (7, 9), (8, 9), (6, 9), (6, 9)]
    assert tg.triple_index == [(2, (3, 4), 4), (6, (7, 9), 9)]
    assert tg.sequence_token_ids == [v[w] for w in "big brown dog chasing red ball red ball next to big brown dog".split()]
    # isolated "cat" is not in the graph
    assert v.get("cat") is None or v["cat"] not in tg.node_token_ids
    t = tg.to_tensors()
    assert t["edges"].shape == (9, 2) and t["pred_token_ids"].shape == (9,) and t["node_token_ids"].shape == (10,)


def test_token_graph_invariants_clip(clip):
    sg = SceneGraph.from_record(load_split(CARD).records[0])
    tg = build_token_graph(sg, clip)
    full = clip(sg.serialize())["input_ids"][1:-1]
    seq = tg.sequence_token_ids
    assert seq == full[: len(seq)]  # the graph's sequence is the serialised string's token prefix
    # isolated item's tokens come after the prefix only
    iso = clip("rocky tall mountains")["input_ids"][1:-1]
    assert full[len(seq):] == iso
    assert len(tg.edges) == len(tg.pred_token_ids)
    # one parallel edge per relation token, from subject head to object head
    for (s_head, (p0, p1), o_head), (_, rel, _) in zip(tg.triple_index, sg.triples()):
        assert p1 - p0 == len(clip(rel)["input_ids"]) - 2
        assert all(tg.edges[j] == (s_head, o_head) for j in range(p0, p1))
    # no node appears in two triples: head indices are all distinct and every node index is used once
    heads = [h for s, _, o in tg.triple_index for h in (s, o)]
    assert len(set(heads)) == len(heads) == 6
    assert sorted(i for i in tg.sequence_index if i < tg.num_nodes) == list(range(tg.num_nodes))
    # head = last token of the phrase (the label's last BPE piece)
    assert tg.node_token_ids[tg.triple_index[0][0]] == clip("snow")["input_ids"][1]
    # faithful serialisation tokenises identically
    assert clip(sg.serialize(faithful=True))["input_ids"] == clip(sg.serialize())["input_ids"]


def test_multi_piece_label_head_is_last_piece(clip):
    sg = SceneGraph.from_triples([("skateboarder", ["tall"]), ("halfpipe", [])], [(0, "riding", 1)])
    tg = build_token_graph(sg, clip)
    pieces = clip("halfpipe")["input_ids"][1:-1]
    assert len(pieces) > 1
    o_head = tg.triple_index[0][2]
    assert tg.node_token_ids[o_head] == pieces[-1]
    # the object's non-head pieces hang on the head with "-" edges
    n_obj = len(pieces)
    assert [e for e, p in zip(tg.edges, tg.pred_token_ids) if e[1] == o_head and p == tg.attribute_token_id] \
        == [(o_head - n_obj + 1 + i, o_head) for i in range(n_obj - 1)]


def test_clip_tokenizer_matches_open_clip(clip):
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    assert len(clip) == CLIP_VOCAB_SIZE
    for text in ["white cold snow adjacent to reflective calm river ", "A photo of a cat!",
                 "don't stop-believing 123 ümlaut café", "  multiple   spaces\tand\nnewlines", "-",
                 "emoji 🎉 and CJK 漢字", "U.S.A. $102.50 CAD", "Hello,World", "ÀÉÎÕÜ naïve façade",
                 "a small red circle left of a large blue square"]:
        assert clip(text)["input_ids"] == [ref.sot_token_id, *ref.encode(text), ref.eot_token_id], text


def test_clip_tokenizer_padding_and_save(tmp_path, clip):
    from transformers import CLIPTokenizer

    ids = clip("a red circle", padding="max_length", max_length=8)["input_ids"]
    assert ids == [49406, 320, 736, 7117, 49407, 49407, 49407, 49407]
    sdxl2 = clip_tokenizer(pad_token="!")
    assert sdxl2("a red circle", padding="max_length", max_length=6)["input_ids"][-1] == 0  # "!" is id 0
    clip.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("white cold snow")["input_ids"] == clip("white cold snow")["input_ids"]

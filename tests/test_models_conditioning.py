"""Conditioning of SD1.5-SG / SDXL-SG: text path, graph inputs (faithful token graph and object graph), gated
fusion, EOS padding, order invariance. Tiny random-init CLIP text encoders with the real CLIP tokenizer."""
import pytest
import torch

from sgalign.models import SGConditioning, SGEncoder, build_conditioning, build_graph_inputs, encode_texts
from sgalign.models.conditioning import unconditional_conditioning
from sgalign.pipelines.tiny import tiny_pipeline
from sgalign.scene_graph import SceneGraph, build_token_graph
from sgalign.scene_graph.graph import Item, Relation



H = W = 16


@pytest.fixture(scope="module")
def pipes():
    """Plain diffusers tiny SD1.5 and SDXL pipelines: their text encoders/tokenizers, and encode_prompt as oracle."""
    return {"sd15": tiny_pipeline("sd15"), "sdxl": tiny_pipeline("sdxl")}


def text_parts(pipe):
    if hasattr(pipe, "text_encoder_2"):
        return [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]
    return [pipe.tokenizer], [pipe.text_encoder]


def spread(enc: SGEncoder, seed: int = 0) -> SGEncoder:
    """Weights large enough that different nodes give clearly different outputs (PyTorch's default init makes a
    6-layer ReLU stack nearly constant, which would let order tests pass vacuously)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / p.shape[1] ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        enc.alpha_obj.fill_(0.7)
    return enc


def encoder(arch, mode, **kw):
    torch.manual_seed(1)
    return spread(SGEncoder(text_dim=32 if arch == "sd15" else 64, embed_dim=16, hidden_dim=16, mode=mode, **kw))


def example():
    """The HF card's record: two identical "leafless slender trees" items, one isolated item."""
    items = [Item(0, "snow", ("white", "cold")), Item(1, "river", ("reflective", "calm")),
             Item(2, "trees", ("leafless", "slender")), Item(3, "trees", ("leafless", "slender")),
             Item(4, "mountains", ("rocky", "tall"))]
    rels = [Relation(0, "adjacent to", 1), Relation(2, "growing near", 1), Relation(3, "growing near", 1)]
    return SceneGraph(items, rels)


def small():
    return SceneGraph([Item(0, "cat"), Item(1, "red sofa"), Item(2, "lamp", ("tall",))], [Relation(0, "on", 1)])


ARCHS = ["sd15", "sdxl"]
MODES = ["object", "faithful"]


# ---- text path --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_text_states_shapes(pipes, arch):
    toks, encs = text_parts(pipes[arch])
    st = encode_texts([example().serialize(), ""], toks, encs)
    dim = 32 if arch == "sd15" else 64
    assert st.hidden.shape == (2, 77, dim) and st.input_ids.shape == (2, 77)
    n = len(toks[0](example().serialize())["input_ids"])
    assert st.lengths.tolist() == [n, 2]
    assert (st.pooled is None) if arch == "sd15" else (st.pooled.shape == (2, 32))


@pytest.mark.parametrize("arch", ARCHS)
def test_text_only_equals_diffusers_prompt_encoding(pipes, arch):
    """Without EOS-copy padding the text-only conditioning is exactly the base pipeline's prompt encoding."""
    pipe = pipes[arch]
    toks, encs = text_parts(pipe)
    graphs = [example(), small()]
    cond = build_conditioning(graphs, None, toks, encs, use_graph=False, pad_with_eos_copies=False, height=H, width=W)
    prompts = [g.serialize() for g in graphs]
    if arch == "sd15":
        ref, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
        torch.testing.assert_close(cond.prompt_embeds, ref, rtol=0, atol=1e-6)
    else:
        ref, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
        torch.testing.assert_close(cond.prompt_embeds, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(cond.pooled_prompt_embeds, pooled, rtol=0, atol=1e-6)
        assert cond.add_time_ids.tolist() == [[H, W, 0, 0, H, W]] * 2


# ---- graph inputs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_faithful_graph_inputs_follow_laion_sg(pipes, arch):
    toks, encs = text_parts(pipes[arch])
    sg = example()
    gi = build_graph_inputs([sg, small()], "faithful", toks, encs)
    tg = build_token_graph(sg, toks[0])
    tg2 = build_token_graph(small(), toks[0])
    n, t = tg.num_nodes + tg2.num_nodes, len(tg.pred_token_ids) + len(tg2.pred_token_ids)
    dim = 32 if arch == "sd15" else 64
    assert gi.x.shape == (n, dim) and gi.pred.shape == (t, dim) and gi.edge_index.shape == (2, t)
    # second graph's edges are offset by the first graph's nodes (one disjoint union graph)
    assert gi.edge_index[:, len(tg.edges):].min() >= tg.num_nodes
    assert gi.sequence_token_ids[0] == tg.sequence_token_ids
    # node features are the phrase's own encoding, BOS/EOS dropped: node 2 = "snow" in "white cold snow"
    alone = encode_texts(["white cold snow", "-"], toks, encs).hidden
    torch.testing.assert_close(gi.x[2], alone[0, 3], rtol=0, atol=1e-6)
    torch.testing.assert_close(gi.pred[0], alone[1, 1], rtol=0, atol=1e-6)  # first edge: "-" attribute predicate


@pytest.mark.parametrize("arch", ARCHS)
def test_object_graph_inputs(pipes, arch):
    toks, encs = text_parts(pipes[arch])
    sg = example()
    gi = build_graph_inputs([sg], "object", toks, encs)
    # 5 items (isolated included, the two identical trees stay two nodes), 3 relations + 5 self-loops
    assert gi.x.shape[0] == 5 and gi.pred.shape[0] == 8
    assert gi.edge_index.t().tolist() == [[0, 1], [2, 1], [3, 1]] + [[i, i] for i in range(5)]
    alone = encode_texts(["white cold snow", "growing near"], toks, encs)
    torch.testing.assert_close(gi.x[0], alone.hidden[0, 1:4].mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(gi.pred[1], alone.hidden[1, 1:3].mean(0), rtol=0, atol=1e-6)
    # the serialised text's tokens, position by position: "white cold snow" -> node 0 (3x), "adjacent to" ->
    # edge 0 (as row 5 + 0), ..., "rocky tall mountains" (isolated) -> node 4
    ids = toks[0](sg.serialize())["input_ids"][1:-1]
    assert gi.sequence_token_ids[0] == ids
    assert gi.gather[0][:8].tolist() == [0, 0, 0, 5, 5, 1, 1, 1] and gi.gather[0][-3:].tolist() == [4, 4, 4]


# ---- fusion -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_per_row_use_graph_is_each_row_on_its_own_path(pipes, arch):
    """A (B,) bool ``use_graph``: the graph rows equal the fused conditioning, the others the text-only one, in one
    call; the gate is open so the two paths differ."""
    toks, encs = text_parts(pipes[arch])
    enc = encoder(arch, "object")
    with torch.no_grad():
        enc.alpha_obj.fill_(0.5)
    graphs = [example(), small()]
    with torch.no_grad():
        mixed = build_conditioning(graphs, enc, toks, encs, use_graph=torch.tensor([True, False]), height=H, width=W)
        fused = build_conditioning(graphs, enc, toks, encs, height=H, width=W)
        text = build_conditioning(graphs, enc, toks, encs, use_graph=False, height=H, width=W)
    assert not torch.allclose(fused.prompt_embeds[0], text.prompt_embeds[0])
    torch.testing.assert_close(mixed.prompt_embeds[0], fused.prompt_embeds[0])
    torch.testing.assert_close(mixed.prompt_embeds[1], text.prompt_embeds[1])
    none = build_conditioning(graphs, enc, toks, encs, use_graph=torch.tensor([False, False]), height=H, width=W)
    torch.testing.assert_close(none.prompt_embeds, text.prompt_embeds)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_gate_zero_equals_text_only_exactly(pipes, arch, mode):
    toks, encs = text_parts(pipes[arch])
    enc = encoder(arch, mode)
    graphs = [example(), small()]
    text_only = build_conditioning(graphs, enc, toks, encs, use_graph=False, height=H, width=W)
    with torch.no_grad():
        enc.alpha_obj.zero_()
    fused = build_conditioning(graphs, enc, toks, encs, height=H, width=W)
    assert torch.equal(fused.prompt_embeds, text_only.prompt_embeds)
    if arch == "sdxl":
        assert torch.equal(fused.pooled_prompt_embeds, text_only.pooled_prompt_embeds)
    # and the first gradient reaches the gate only (reference §2.6)
    fused = build_conditioning(graphs, enc, toks, encs, height=H, width=W)
    fused.prompt_embeds.square().sum().backward()
    assert enc.alpha_obj.grad.abs().item() > 0
    assert all(p.grad is None or not p.grad.any() for n, p in enc.named_parameters() if n != "alpha_obj")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_fusion_positions_shapes_and_eos_padding(pipes, arch, mode):
    toks, encs = text_parts(pipes[arch])
    enc = encoder(arch, mode)
    sg = example()
    with torch.no_grad():
        text_only = build_conditioning([sg], enc, toks, encs, use_graph=False, height=H, width=W)
        fused = build_conditioning([sg], enc, toks, encs, height=H, width=W)
    dim = 32 if arch == "sd15" else 64
    assert fused.prompt_embeds.shape == (1, 77, dim)
    assert (fused.pooled_prompt_embeds is None) == (arch == "sd15")
    if arch == "sdxl":  # the graph never touches the pooled vector
        assert fused.pooled_prompt_embeds.shape == (1, 32)
        assert torch.equal(fused.pooled_prompt_embeds, text_only.pooled_prompt_embeds)
    n = len(toks[0](sg.serialize())["input_ids"])
    n_triple = len(build_token_graph(sg, toks[0]).sequence_token_ids)
    changed = (fused.prompt_embeds[0] != text_only.prompt_embeds[0]).any(-1)
    # BOS, EOS and padding untouched; triple tokens changed; isolated-item tokens only in object mode
    want = torch.zeros(77, dtype=torch.bool)
    want[1:1 + n_triple] = True
    if mode == "object":
        want[1 + n_triple:n - 1] = True
    assert changed.tolist() == want.tolist()
    # padding = copies of the EOS vector
    pad = fused.prompt_embeds[0, n:]
    assert torch.equal(pad, fused.prompt_embeds[0, n - 1].expand_as(pad))
    # residual = alpha * graph output: object mode, "white cold snow" positions all carry node 0's output
    if mode == "object":
        r = (fused.prompt_embeds - text_only.prompt_embeds)[0]
        torch.testing.assert_close(r[1], r[2])
        torch.testing.assert_close(r[1], r[3])
        assert not torch.allclose(r[1], r[6], atol=1e-4)  # a different node


@pytest.mark.parametrize("arch", ARCHS)
def test_long_graph_truncates_at_75_content_tokens(pipes, arch):
    toks, encs = text_parts(pipes[arch])
    objs = [(f"object{i}", ["shiny", "enormous"]) for i in range(12)]
    sg = SceneGraph.from_triples(objs, [(i, "standing next to", i + 1) for i in range(11)])
    for mode in MODES:
        enc = encoder(arch, mode)
        with torch.no_grad():
            fused = build_conditioning([sg], enc, toks, encs, height=H, width=W)
            text_only = build_conditioning([sg], enc, toks, encs, use_graph=False, height=H, width=W)
        changed = (fused.prompt_embeds[0] != text_only.prompt_embeds[0]).any(-1)
        assert changed[1:76].all() and not changed[0] and not changed[76:].any()


@pytest.mark.parametrize("arch", ARCHS)
def test_object_mode_order_invariance(pipes, arch):
    """Shuffling items and relations changes neither node outputs (by item) nor edge outputs (by relation); the
    fused embeddings depend on item order only through the serialised text."""
    toks, encs = text_parts(pipes[arch])
    enc = encoder(arch, "object")
    sg = example()
    perm_items = [sg.items[i] for i in (4, 2, 0, 3, 1)]  # isolated item stays the only isolated one
    shuffled_items = SceneGraph(perm_items, sg.relations)
    rel_order = [2, 0, 1]
    shuffled_rels = SceneGraph(perm_items, [sg.relations[k] for k in rel_order])

    def outputs(g):
        gi = build_graph_inputs([g], "object", toks, encs)
        with torch.no_grad():
            x, p = enc(gi.x, gi.pred, gi.edge_index)
        ids = [it.item_id for it in g.items]
        return {ids[n]: x[n] for n in range(len(ids))}, p[:len(g.relations)]

    nodes, edges = outputs(sg)
    for g, order in ((shuffled_items, [0, 1, 2]), (shuffled_rels, rel_order)):
        n2, e2 = outputs(g)
        for item_id in nodes:
            torch.testing.assert_close(n2[item_id], nodes[item_id], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e2, edges[order], rtol=1e-5, atol=1e-6)
    # outputs are not trivially constant: the two distinct phrases differ
    assert not torch.allclose(nodes[0], nodes[1], atol=1e-4)
    with torch.no_grad():
        a = build_conditioning([sg], enc, toks, encs, height=H, width=W)
        b = build_conditioning([shuffled_items], enc, toks, encs, height=H, width=W)
    assert sg.serialize() == shuffled_items.serialize()
    torch.testing.assert_close(a.prompt_embeds, b.prompt_embeds, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_records_and_scene_graphs_agree(pipes, arch):
    toks, encs = text_parts(pipes[arch])
    enc = encoder(arch, "faithful")
    sg = example()
    with torch.no_grad():
        a = build_conditioning([sg], enc, toks, encs, height=H, width=W)
        b = build_conditioning([sg.to_record(img_id="7").model_dump()], enc, toks, encs, height=H, width=W)
    assert torch.equal(a.prompt_embeds, b.prompt_embeds)
    with pytest.raises(ValueError, match="graph 1"):
        build_conditioning([sg, {"img_id": 3}], enc, toks, encs, height=H, width=W)
    with pytest.raises(ValueError, match="no scene graphs"):
        build_conditioning([], enc, toks, encs, height=H, width=W)
    with torch.no_grad():  # a single record is one graph
        one = build_conditioning(sg.to_record().model_dump(), enc, toks, encs, height=H, width=W)
    assert torch.equal(one.prompt_embeds, a.prompt_embeds)


def test_width_mismatch_is_an_error(pipes):
    toks, encs = text_parts(pipes["sd15"])
    with pytest.raises(ValueError, match="text_dim=64"):
        build_conditioning([small()], encoder("sdxl", "object"), toks, encs)


@pytest.mark.parametrize("arch", ARCHS)
def test_unconditional_branch(pipes, arch):
    toks, encs = text_parts(pipes[arch])
    enc = encoder(arch, "object")
    with torch.no_grad():
        cond = build_conditioning([example(), small()], enc, toks, encs, height=H, width=W)
    unc = unconditional_conditioning(cond, toks, encs, pad_with_eos_copies=False)
    assert unc.prompt_embeds.shape == cond.prompt_embeds.shape
    if arch == "sdxl":  # zeros, same time ids
        assert not unc.prompt_embeds.any() and not unc.pooled_prompt_embeds.any()
        assert torch.equal(unc.add_time_ids, cond.add_time_ids)
    else:  # the empty text, as StableDiffusionPipeline's negative prompt ""
        _, neg = pipes["sd15"].encode_prompt("", "cpu", 1, True, negative_prompt="")
        torch.testing.assert_close(unc.prompt_embeds, neg.expand(2, -1, -1), rtol=0, atol=1e-6)


def test_conditioning_value_ops():
    c = SGConditioning(torch.randn(2, 77, 8), torch.randn(2, 4), torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2))
    r = c.repeat_interleave(3)
    assert len(r) == 6 and torch.equal(r.prompt_embeds[2], c.prompt_embeds[0])
    assert torch.equal(r[3:].pooled_prompt_embeds, c.pooled_prompt_embeds[[1, 1, 1]])
    both = SGConditioning.cat([c.zeros_like(), c])
    assert len(both) == 4 and not both.prompt_embeds[:2].any()
    kw = c.to(torch.float64).unet_kwargs()
    assert kw["encoder_hidden_states"].dtype == torch.float64
    assert set(kw["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    assert "added_cond_kwargs" not in SGConditioning(torch.zeros(1, 77, 8)).unet_kwargs()

"""SG encoder: sg2im triple convolution, LAION-SG state-dict compatibility, tensor shapes."""
import math

import pytest
import torch
import torch.nn.functional as F

from sgalign.models import GraphTripleConv, SGEncoder
from sgalign.models.loading import MissingModelFileError, load_sg_encoder



def sg2im_reference(conv: GraphTripleConv, x, pred, edges, pooling="avg"):
    """sg2im's GraphTripleConv.forward written out with index_add (reference §2.2), for comparison."""
    h, d = conv.hidden_dim, conv.output_dim
    s, o = edges[:, 0], edges[:, 1]
    t = conv.net1(torch.cat([x[s], pred, x[o]], dim=1))
    new_s, new_p, new_o = t[:, :h], t[:, h:h + d], t[:, h + d:]
    pooled = torch.zeros(x.shape[0], h).index_add(0, s, new_s).index_add(0, o, new_o)
    if pooling == "avg":
        ones = torch.ones(len(s))
        counts = torch.zeros(x.shape[0]).index_add(0, s, ones).index_add(0, o, ones).clamp(min=1)
        pooled = pooled / counts[:, None]
    return conv.net2(pooled), new_p


@pytest.mark.parametrize("pooling", ["avg", "sum"])
def test_triple_conv_matches_sg2im(pooling):
    torch.manual_seed(0)
    conv = GraphTripleConv(6, 5, hidden_dim=7, pooling=pooling)
    x, pred = torch.randn(5, 6), torch.randn(4, 6)
    # node 0: subject of 3 edges (parallel ones too); node 4: on no edge (count clamps to 1, pooled 0)
    edges = torch.tensor([[0, 1], [0, 1], [0, 2], [3, 0]])
    out_x, out_p = conv(x, pred, edges.t())
    ref_x, ref_p = sg2im_reference(conv, x, pred, edges, pooling)
    assert out_x.shape == (5, 5) and out_p.shape == (4, 5)
    torch.testing.assert_close(out_x, ref_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_p, ref_p, rtol=0, atol=0)
    assert (out_x >= 0).all() and (out_p >= 0).all()  # ReLU after the final Linear of both MLPs
    torch.testing.assert_close(out_x[4], conv.net2(torch.zeros(7)))  # a node on no edge gets net2(0)


def test_triple_conv_hand_computed():
    """1-d widths, weights set by hand: net1 = [relu(s+p+o)] * 3 columns, net2 = identity on positives."""
    conv = GraphTripleConv(1, 1, hidden_dim=1)
    with torch.no_grad():
        conv.net1[0].weight.fill_(1.0), conv.net1[0].bias.zero_()
        conv.net1[2].weight.copy_(torch.tensor([[1.0], [2.0], [3.0]])), conv.net1[2].bias.zero_()
        conv.net2[0].weight.fill_(1.0), conv.net2[0].bias.zero_()
        conv.net2[2].weight.fill_(1.0), conv.net2[2].bias.zero_()
    x, pred = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[0.5], [1.0]])
    edges = torch.tensor([[0, 1], [0, 2]]).t()  # edge sums: 1+.5+2 = 3.5 and 1+1+4 = 6
    out_x, out_p = conv(x, pred, edges)
    # subject msgs 1*3.5, 1*6 -> node 0 avg 4.75; object msgs 3*3.5 -> node 1, 3*6 -> node 2; predicates 2*sum
    assert out_x.squeeze(1).tolist() == [4.75, 10.5, 18.0]
    assert out_p.squeeze(1).tolist() == [7.0, 12.0]


LAION_KEYS = {
    **{f"graph_conv.net1.{i}.{p}": None for i in (0, 2) for p in ("weight", "bias")},
    **{f"graph_conv.net2.{i}.{p}": None for i in (0, 2) for p in ("weight", "bias")},
    **{f"graph_net.gconvs.{k}.net{n}.{i}.{p}": None for k in range(5) for n in (1, 2) for i in (0, 2)
       for p in ("weight", "bias")},
    "projection_mlp_1.weight": (512, 2048), "projection_mlp_2.weight": (2048, 512), "alpha_obj": (1,),
    "logit_scale": (),
}
# sg2im shapes at width 512: net1 1536 -> 512 -> 1536, net2 512 -> 512 -> 512
_MLP_SHAPES = {"net1.0.weight": (512, 1536), "net1.0.bias": (512,), "net1.2.weight": (1536, 512),
               "net1.2.bias": (1536,), "net2.0.weight": (512, 512), "net2.0.bias": (512,),
               "net2.2.weight": (512, 512), "net2.2.bias": (512,)}
for _k in LAION_KEYS:
    if LAION_KEYS[_k] is None:
        LAION_KEYS[_k] = _MLP_SHAPES[_k.split(".", 1)[1] if _k.startswith("graph_conv") else _k.split(".", 3)[3]]


def synthesised_laion_checkpoint(path, prefix=""):
    """A file shaped like LAION-SG's baseline3_100.pt: exactly the keys/shapes of reference §2.1."""
    g = torch.Generator().manual_seed(0)
    state = {prefix + k: torch.randn(shape, generator=g) * 0.02 for k, shape in LAION_KEYS.items()}
    torch.save({"epoch": 100, "iteration": 1, "name": "baseline3", "state_dict": state, "optimizer": {}}, path)
    return {k.removeprefix(prefix): v for k, v in state.items()}


def test_faithful_state_dict_is_laion_sg(tmp_path):
    enc = SGEncoder(**SGEncoder.laion_sg_config())
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == LAION_KEYS
    assert sum(p.numel() for p in enc.parameters()) == 14_698_498  # reference §2.1
    assert enc.alpha_obj.item() == 0.0 and enc.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_laion_checkpoint_loads_strictly(tmp_path, prefix):
    path = tmp_path / "baseline3_100.pt"
    state = synthesised_laion_checkpoint(path, prefix)
    enc = load_sg_encoder(path)
    assert enc.config.mode == "faithful"
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[k]), k
    # strictness: an extra or a missing key is an error, not a silent partial load
    bad = dict(state, extra_key=torch.zeros(1))
    torch.save({"state_dict": bad}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="extra_key"):
        SGEncoder.from_laion_checkpoint(tmp_path / "bad.pt")
    del state["alpha_obj"]
    torch.save({"state_dict": state}, tmp_path / "bad2.pt")
    with pytest.raises(RuntimeError, match="alpha_obj"):
        SGEncoder.from_laion_checkpoint(tmp_path / "bad2.pt")
    with pytest.raises(FileNotFoundError, match="baseline3_100.pt"):
        SGEncoder.from_laion_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(MissingModelFileError, match="sg_encoder"):
        load_sg_encoder(tmp_path / "nothing_here")


def test_object_mode_takes_laion_weights_without_logit_scale(tmp_path):
    state = synthesised_laion_checkpoint(tmp_path / "ckpt.pt")
    enc = SGEncoder.from_laion_checkpoint(tmp_path / "ckpt.pt", mode="object")
    assert "logit_scale" not in enc.state_dict()
    assert torch.equal(enc.graph_net.gconvs[4].net2[2].weight, state["graph_net.gconvs.4.net2.2.weight"])


def test_encoder_forward_shapes_and_composition():
    torch.manual_seed(0)
    enc = SGEncoder(text_dim=24, embed_dim=8, hidden_dim=6, num_graph_layers=5)
    assert len(enc.graph_net.gconvs) == 5  # 1 + 5 graph convolutions
    x, pred = torch.randn(4, 24), torch.randn(3, 24)
    edges = torch.tensor([[0, 1], [2, 1], [3, 3]])
    out_x, out_p = enc(x, pred, edges.t())
    assert out_x.shape == (4, 24) and out_p.shape == (3, 24)
    # by hand: bias-free projection in, 6 sg2im layers, row L2 normalisation, bias-free projection out
    assert enc.projection_mlp_1.bias is None and enc.projection_mlp_2.bias is None
    hx, hp = x @ enc.projection_mlp_1.weight.t(), pred @ enc.projection_mlp_1.weight.t()
    for conv in [enc.graph_conv, *enc.graph_net.gconvs]:
        hx, hp = sg2im_reference(conv, hx, hp, edges)
    hx, hp = F.normalize(hx, dim=1), F.normalize(hp, dim=1)
    torch.testing.assert_close(out_x, hx @ enc.projection_mlp_2.weight.t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_p, hp @ enc.projection_mlp_2.weight.t(), rtol=1e-5, atol=1e-6)


def test_bad_mode_is_an_error():
    with pytest.raises(ValueError, match="mode"):
        SGEncoder(text_dim=8, embed_dim=4, hidden_dim=4, mode="tokens")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    enc = SGEncoder(text_dim=16, embed_dim=8, hidden_dim=8, mode="faithful", gate_init=0.25)
    enc.save_pretrained(tmp_path / "sg_encoder")
    assert sorted(p.name for p in (tmp_path / "sg_encoder").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]
    back = load_sg_encoder(tmp_path / "sg_encoder")
    assert back.config.mode == "faithful" and back.config.text_dim == 16
    for (k, v), (k2, v2) in zip(enc.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.parametrize("text_dim", [2048, 768])  # SDXL (768 + 1280 concatenated) and SD1.5
def test_full_width_forward_on_the_laion_token_graph(text_dim):
    """Shapes at full width on the HF card's example: O nodes, T = sum(a-1 + b-1 + r) predicates."""
    from sgalign.scene_graph import SceneGraph, build_token_graph, clip_tokenizer
    from sgalign.scene_graph.graph import Item, Relation

    items = [Item(0, "snow", ("white", "cold")), Item(1, "river", ("reflective", "calm")),
             Item(2, "trees", ("leafless", "slender")), Item(3, "mountains", ("rocky", "tall"))]
    sg = SceneGraph(items, [Relation(0, "adjacent to", 1), Relation(2, "growing near", 1)])
    tok = clip_tokenizer()
    tg = build_token_graph(sg, tok)
    n = {t: len(tok(t)["input_ids"]) - 2 for t in ("white cold snow", "reflective calm river",
                                                   "leafless slender trees", "adjacent to", "growing near")}
    a1, b1, a2, r1, r2 = (n["white cold snow"], n["reflective calm river"], n["leafless slender trees"],
                          n["adjacent to"], n["growing near"])
    nodes, preds = a1 + b1 + a2 + b1, (a1 - 1 + b1 - 1 + r1) + (a2 - 1 + b1 - 1 + r2)
    assert (tg.num_nodes, len(tg.pred_token_ids)) == (nodes, preds)
    enc = SGEncoder(**SGEncoder.laion_sg_config(text_dim=text_dim))
    t = tg.to_tensors()
    with torch.no_grad():
        x, p = enc(torch.randn(nodes, text_dim), torch.randn(preds, text_dim), t["edges"].t())
    assert x.shape == (nodes, text_dim) and p.shape == (preds, text_dim)
    assert enc.projection_mlp_1.weight.shape == (512, text_dim)


# ---- input sensitivity (issue 28): a fresh encoder must not start collapsed -----------------------------------
SPREAD_MIN, INVERSION_MIN = 0.1, 2e-3  # measured: default init 0.027 / 1.2e-7, variance-keeping 0.31 / 1.5e-2


@pytest.fixture(scope="module")
def world_text():
    from sgalign.models.loading import load_model
    from sgalign.world import invert_predicates, sample_split
    from sgalign.world.paths import world_model_path

    comps = load_model(world_model_path(), text_only=True)
    graphs = [s.graph() for s in sample_split("validation", 64, seed=0) if s.relations][:24]
    return graphs, [invert_predicates(g) for g in graphs], [comps["tokenizer"]], [comps["text_encoder"]]


@pytest.mark.parametrize("init, sensitive", [("default", False), ("variance-keeping", True)])
def test_fresh_six_layer_encoder_is_input_sensitive_only_with_the_variance_keeping_init(world_text, init, sensitive):
    """Default (PyTorch) init, LAION-SG's: six Linear-ReLU triple convolutions collapse the spread of their inputs,
    so objects get near-identical outputs and an inverted predicate moves them by ~1e-7. He-normal init keeps it."""
    from sgalign.models.sg_encoder import input_sensitivity

    graphs, inverted, tok, te = world_text
    torch.manual_seed(0)
    enc = SGEncoder(text_dim=te[0].config.hidden_size, embed_dim=64, hidden_dim=64, num_graph_layers=5, init=init)
    s = input_sensitivity(enc, graphs, inverted, tok, te)
    assert s["nodes"] > 50
    ok = s["spread"] >= SPREAD_MIN and s["inversion_change"] >= INVERSION_MIN
    assert ok == sensitive, s


def test_laion_sg_config_keeps_pytorch_init_and_init_is_checked():
    assert SGEncoder.laion_sg_config()["init"] == "default"
    with pytest.raises(ValueError, match="init must be one of"):
        SGEncoder(text_dim=8, embed_dim=4, hidden_dim=4, num_graph_layers=1, init="xavier")

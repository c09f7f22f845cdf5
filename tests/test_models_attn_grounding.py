"""Cross-attention grounding (models.attn_grounding): capture leaves the UNet's output unchanged, token weights and
box masks land where they should, the loss's worked values, and that training on it grounds the attention
(issue 28)."""
import pytest
import torch

from sgalign.models.attn_grounding import (box_masks, capture_cross_attention, grounding_loss,
                                           object_token_weights)
from sgalign.scene_graph import SceneGraph


def _tiny_unet():
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 32],
                                layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=8)


def test_capture_leaves_the_output_bit_identical_and_restores_the_processors():
    unet = _tiny_unet().eval()
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 16)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=c).sample
        with capture_cross_attention(unet) as maps:
            seen = unet(x, t, encoder_hidden_states=c).sample
    assert torch.equal(plain, seen)
    # one map per cross-attention layer (down 8x8, mid 4x4, the up block's two at 8x8), heads folded into the batch,
    # rows softmaxed
    assert sorted(m.shape for m in maps) == sorted([(2 * 4, 64, 7)] * 3 + [(2 * 4, 16, 7)])
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:2]))
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_detached_context_cuts_the_key_path_to_the_conditioning_only():
    """``detach_context``: the maps are the same numbers, the forward is unchanged, and a loss on the first layer's map
    (whose queries come from x alone) reaches the conditioning not at all, while the UNet's own weights still learn."""
    unet = _tiny_unet().eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    grads, outs, firsts = {}, {}, {}
    for detach in (False, True):
        c = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        unet.zero_grad()
        with capture_cross_attention(unet, detach_context=detach) as maps:
            outs[detach] = unet(x, t, encoder_hidden_states=c).sample.detach()
        first = maps[0]  # the down block's map: its queries depend on x and t only
        firsts[detach] = first.detach()
        (first[:, :, 1:3].sum()).backward()
        grads[detach] = (c.grad, unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.grad.clone(),
                         unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q.weight.grad.clone())
    assert torch.equal(outs[False], outs[True]) and torch.equal(firsts[False], firsts[True])
    assert grads[False][0].abs().sum() > 0  # "all": the key path reaches the conditioning
    assert grads[True][0] is None  # "unet": nothing reaches it from this layer's map
    torch.testing.assert_close(grads[True][1], grads[False][1])  # the keys' and queries' weights learn the same
    torch.testing.assert_close(grads[True][2], grads[False][2])


def test_token_weights_follow_the_phrase_tokens_of_each_object():
    from sgalign.models.graph_inputs import build_graph_inputs
    from sgalign.models.loading import load_model
    from sgalign.world.paths import world_model_path

    comps = load_model(world_model_path())
    tok, te = comps["tokenizer"], comps["text_encoder"].eval()
    sg = SceneGraph.from_triples([("circle", ("red", "small")), ("square", ("blue", "large"))], [(0, "left of", 1)])
    gi = build_graph_inputs([sg], "object", [tok], [te])
    w = object_token_weights(gi, 77)
    ids = tok(sg.serialize(), padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    words = [tok.decode([int(i)]).strip() for i in ids]
    order = [int(i) for i in sg.to_pyg().item_ids]
    for o, item in enumerate(order):
        got = [words[s] for s in torch.nonzero(w[0, o])[:, 0].tolist()]
        assert got == sg.phrase(sg.items[item]).split()  # colour size shape, this object's only
        torch.testing.assert_close(w[0, o].sum(), torch.tensor(1.0))
    assert w[0, :, 0].sum() == 0  # never BOS


def test_box_masks_are_cell_coverage_in_node_order():
    sg = SceneGraph.from_triples([("circle", ("red", "small")), ("square", ("blue", "large"))], [])
    boxes = {0: (0, 0, 32, 32), 1: (48, 16, 64, 32)}
    m = box_masks([sg], [boxes], 64, 3, 4)  # 4 x 4 cells of 16 px
    order = [int(i) for i in sg.to_pyg().item_ids]
    want = {0: torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.]]),
            1: torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0.]])}
    for o, item in enumerate(order):
        torch.testing.assert_close(m[0, o].view(4, 4), want[item])
    assert m[0, 2].sum() == 0  # padding object
    torch.testing.assert_close(box_masks([sg], [{0: (0, 0, 8, 8), 1: boxes[1]}], 64, 2, 4)[0, order.index(0)].max(),
                               torch.tensor(0.25))  # a quarter of a cell


def test_loss_worked_values():
    token_w = torch.zeros(2, 2, 5)
    token_w[0, 0, 1] = token_w[1, 0, 1] = 1.0  # one object per row on token 1; row 0 also an object on tokens 2-3
    token_w[0, 1, 2:4] = 0.5
    mask = torch.zeros(2, 2, 4)
    mask[:, 0, 0] = 1.0  # object 0 in cell 0
    mask[0, 1, 3] = 1.0  # row 0's object 1 in cell 3
    p = torch.full((2, 1, 4, 5), 0.2)  # uniform attention: inside fraction = 1/4 everywhere
    uniform = grounding_loss([p.view(2, 4, 5)], token_w, {2: mask}, torch.tensor([True, True]))
    assert float(uniform) == pytest.approx((1 - 0.25) ** 2)
    q = torch.zeros(2, 4, 5)
    q[:, 0, 1] = 1.0  # token 1 attended only from cell 0: object 0 inside
    q[0, 3, 2], q[0, 1, 3] = 1.0, 1.0  # row 0, object 1: half of its mass in its cell
    # row 0: object 0 -> 0, object 1 -> (1 - 1/2)^2; row 1: object 0 -> 0; mean of the three
    assert float(grounding_loss([q], token_w, {2: mask}, torch.tensor([True, True]))) == pytest.approx(0.25 / 3)
    # rows on the empty prompt do not count
    assert float(grounding_loss([q], token_w, {2: mask}, torch.tensor([False, True]))) == pytest.approx(0.0)
    assert float(grounding_loss([q], token_w, {2: mask}, torch.tensor([False, False]))) == 0.0


def test_training_on_the_loss_grounds_the_attention():
    """60 steps on the loss alone move a fresh UNet's cross-attention of a token into a fixed box: the loss falls to
    under half its start. The token's key depends only on the conditioning, so the query positions must learn it."""
    unet = _tiny_unet().train()
    torch.manual_seed(1)
    x, t = torch.randn(4, 4, 8, 8), torch.randint(0, 1000, (4,))
    c = torch.randn(4, 3, 16)
    token_w = torch.zeros(4, 1, 3)
    token_w[:, 0, 1] = 1.0
    sg = SceneGraph.from_triples([("circle", ("red", "small"))], [])
    masks = {r: box_masks([sg] * 4, [{0: (0, 0, 32, 32)}] * 4, 64, 1, r) for r in (4, 8)}
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        with capture_cross_attention(unet) as maps:
            unet(x, t, encoder_hidden_states=c)
        loss = grounding_loss(maps, token_w, masks, torch.ones(4, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.4  # ~ (1 - 1/4)^2 at init: attention spread over the canvas
    assert losses[-1] < 0.5 * losses[0]

"""Per-graph noise (``diffusion.noise``; issue 27): every image of an evaluation has its own initial noise, a stable
function of (graph, seed k); the model and its baseline draw identical noise per image; the shared rule is kept for
old results and differs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sgalign.diffusion.noise import hashed_seed, image_generators, image_seeds, noise_keys
from sgalign.evaluation.protocol import EvalProtocol
from sgalign.evaluation.sampling import generate, input_noise_keys
from sgalign.world import sample_split


def test_hashed_seed_is_a_fixed_function_and_keeps_build_pairs_seeds():
    from data_builders.laion_sg import candidate_seed

    # the value of the documented rule, computed by hand: blake2b-64 of "0:img:3", top bit cleared
    import hashlib
    want = int.from_bytes(hashlib.blake2b(b"0:img:3", digest_size=8).digest(), "big") & (2**63 - 1)
    assert hashed_seed(0, "img", 3) == want == candidate_seed(0, "img", 3)


def test_two_graphs_never_share_noise_and_repeats_get_their_own_key():
    graphs = [s.graph() for s in sample_split("test", 64, seed=0)]
    keys = input_noise_keys(graphs)
    seeds = image_seeds([0, 1, 2], keys)
    assert len(set(seeds)) == len(seeds) == 3 * 64
    # the same content twice in one set: distinct keys, so distinct noise
    k2 = noise_keys(["a graph", "b graph", "a graph"])
    assert k2[0] != k2[2] and k2[2].endswith("#2") and k2[0] == noise_keys(["a graph"])[0]
    noise = torch.stack([torch.randn((4, 8, 8), generator=g) for g in image_generators([0], keys[:8])])
    flat = noise.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))


def test_same_graph_seed_and_rule_always_give_the_same_noise():
    g = [s.graph() for s in sample_split("validation", 5, seed=0)]
    a = [torch.randn((4, 16, 16), generator=x) for x in image_generators([3, 7], input_noise_keys(g))]
    b = [torch.randn((4, 16, 16), generator=x) for x in image_generators([3, 7], input_noise_keys(list(g)))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # graph 2's noise does not depend on which other graphs are in the set, nor on its position
    c = [torch.randn((4, 16, 16), generator=x) for x in image_generators([3, 7], input_noise_keys([g[2], g[0]]))]
    assert torch.equal(c[0], a[4]) and torch.equal(c[1], a[5])
    # another seed list draws other noise for every graph; the shared rule gives every graph seed k's noise
    d = image_seeds([4, 8], input_noise_keys(g))
    assert not set(d) & set(image_seeds([3, 7], input_noise_keys(g)))
    assert image_seeds([3, 7], input_noise_keys(g), "shared") == [3, 7] * 5


def test_model_and_baseline_draw_identical_noise_per_image(tmp_path, monkeypatch):
    """``generate`` (what evaluate.py samples with) for two different tiny models: the initial latents of every image
    are the same for both, and differ between graphs."""
    import sgalign.pipelines.sg_pipeline as sgp
    from sgalign.pipelines import StableDiffusionSGPipeline
    from sgalign.pipelines.tiny import make_tiny

    drawn: list[torch.Tensor] = []
    real = sgp.randn_tensor
    monkeypatch.setattr(sgp, "randn_tensor", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    protocol = EvalProtocol.model_validate({"sampling": {"seeds": [0, 1], "steps": 1, "batch_graphs": 2}})
    graphs = [s.graph() for s in sample_split("test", 3, seed=0)]
    keys = input_noise_keys(graphs)
    per_model = []
    for seed in (0, 1):
        pipe = StableDiffusionSGPipeline.from_pretrained(make_tiny("sd15-sg", tmp_path / f"m{seed}", seed=seed))
        pipe.set_progress_bar_config(disable=True)
        drawn.clear()
        images = generate(pipe, graphs, protocol, 1.0, keys)
        per_model.append((torch.cat(drawn), images))
    (noise_a, img_a), (noise_b, img_b) = per_model
    assert noise_a.shape[0] == 6 and torch.equal(noise_a, noise_b)
    assert not np.array_equal(img_a, img_b)  # two models, the same noise
    flat = noise_a.flatten(1)
    assert not torch.equal(flat[0], flat[2]) and not torch.equal(flat[1], flat[3])  # graph 0 vs graph 1, per seed


def test_shared_rule_reproduces_the_old_seed_list():
    with pytest.raises(ValueError, match="noise key"):
        image_seeds([0], None, "per-graph")
    assert EvalProtocol().sampling.noise == "per-graph"


def test_spatial_hold_worked_example_on_true_and_mirrored_renders():
    """True renders of graphs whose relations are all horizontal: every spatial triple is drawn and holds (1.0);
    their mirror images draw the same objects with every horizontal relation reversed (0.0): Δ = -1 exactly, and a
    size-free set has no size triples."""
    from sgalign.evaluation import GraphParserExtractor
    from sgalign.evaluation.sg_iou import compare_spatial_hold, spatial_hold, triple_counts
    from sgalign.world import WorldOracle, render_array

    scenes = [s for s in sample_split("validation", 400, seed=0)
              if s.relations and all(p in ("left of", "right of") for _, p, _ in s.relations)
              and all(o.shape != "triangle" for o in s.objects)][:5]
    graphs = [s.graph() for s in scenes]
    renders = render_array(scenes)
    ex = GraphParserExtractor(WorldOracle(), granularity="phrase")
    true = triple_counts(graphs, [ex.extract(im, reference=g) for im, g in zip(renders, graphs)])
    mirror = triple_counts(graphs, [ex.extract(im[:, ::-1], reference=g) for im, g in zip(renders, graphs)])
    n = sum(len(g.relations) for g in graphs)
    assert true["spatial"].sum(0).tolist() == [n, n, n] and true["size"].sum() == 0
    assert mirror["spatial"].sum(0).tolist() == [n, n, 0]
    groups = list(range(5))
    a = spatial_hold(true["spatial"], groups=groups, n_resamples=100)
    b = spatial_hold(mirror["spatial"], groups=groups, n_resamples=100)
    assert a["holds_given_found"]["estimate"] == 1.0 and b["holds_given_found"]["estimate"] == 0.0
    assert (a["triples"], a["both_found"], a["holds"]) == (n, n, n)
    d = compare_spatial_hold(mirror["spatial"], true["spatial"], groups=groups, n_resamples=100)
    assert d["estimate"] == d["low"] == d["high"] == -1.0
    # nothing drawn: the rate is undefined (None), never NaN in a results file
    none = np.zeros((5, 3), dtype=np.int64)
    none[:, 0] = 1
    assert spatial_hold(none, groups=groups, n_resamples=10)["holds_given_found"] is None


def test_results_under_different_noise_rules_are_never_paired():
    """A results.json from before version 3 (no sampling.noise: the shared rule) is refused beside a per-graph one,
    naming both; two of one rule pass."""
    from sgalign.evaluation.sampling import check_same_noise, noise_rule

    old = {"protocol": {"sampling": {"seeds": [0, 1]}}}
    new = {"protocol": {"sampling": {"seeds": [0, 1], "noise": "per-graph"}}}
    assert noise_rule(old) == "shared" and noise_rule(new) == "per-graph"
    assert check_same_noise({"a": new, "b": new}) == "per-graph"
    with pytest.raises(ValueError, match=r"a 'shared'.*b 'per-graph'"):
        check_same_noise({"a": old, "b": new})

"""The predicate probe (``world.invert_predicates``, ``evaluation.conditioning_gap.predicate_probe``): worked examples
with two stand-in pipelines over the world's true renders. One draws what the predicates say (an inverted horizontal
relation gets the mirrored render), the other ignores them (the same render whatever the predicate)."""
from types import SimpleNamespace

import numpy as np
import pytest

from sgalign.evaluation.conditioning_gap import predicate_probe
from sgalign.evaluation.sampling import input_noise_keys
from sgalign.scene_graph import SceneGraph
from sgalign.world import invert_predicates, render_array, sample_split


def test_invert_predicates_inverts_every_predicate_and_keeps_the_objects():
    g = SceneGraph.from_triples([("circle", ("red", "large")), ("square", ("blue", "small"))],
                                [(0, "left of", 1), (0, "bigger than", 1)])
    inv = invert_predicates(g)
    assert [(r.subject, r.predicate, r.object) for r in inv.relations] == [(0, "right of", 1), (0, "smaller than", 1)]
    assert inv.items == g.items and g.relations[0].predicate == "left of"  # the input is not changed
    back = invert_predicates(inv)
    assert [r.predicate for r in back.relations] == ["left of", "bigger than"]


def _key(g):
    return (tuple((i.label, i.attributes) for i in g.items), tuple((r.subject, r.predicate, r.object)
                                                                   for r in g.relations))


class _Pipe:
    """Returns the true render for a true graph; for an inverted graph, the mirrored render when ``reads`` (every
    relation is horizontal, so mirroring makes exactly the inverted predicates true), else the same render."""

    def __init__(self, scenes, reads: bool):
        self.renders = {_key(s.graph()): render_array([s])[0] for s in scenes}
        self.reads = reads
        self.keys = []  # the noise keys of every call

    def __call__(self, graphs, seeds, noise_keys=None, **kw):
        self.keys += list(noise_keys or [])
        out = []
        for g in graphs:
            if _key(g) in self.renders:
                im = self.renders[_key(g)]
            else:
                im = self.renders[_key(invert_predicates(g))]
                im = im[:, ::-1] if self.reads else im
            out += [im] * len(seeds)
        return SimpleNamespace(images=np.stack(out).astype(np.float32) / 255)


def _horizontal_scenes(n):
    scenes = [s for s in sample_split("validation", 400, seed=0)
              if s.relations and all(p in ("left of", "right of") for _, p, _ in s.relations)
              and all(o.shape != "triangle" for o in s.objects)]  # symmetric shapes: a mirror changes only layout
    assert len(scenes) >= n
    return scenes[:n]


@pytest.mark.parametrize("reads", [True, False])
def test_predicate_probe_tells_a_model_that_reads_predicates_from_one_that_does_not(reads):
    scenes = _horizontal_scenes(6)
    graphs = [s.graph() for s in scenes]
    pipe = _Pipe(scenes, reads)
    seeds = [0, 1]
    images = (pipe(graphs, seeds).images * 255).round().astype(np.uint8)
    keys = input_noise_keys(graphs)
    r = predicate_probe(pipe, graphs, images, seeds, noise_keys=keys, n_resamples=200)
    assert pipe.keys == keys and r["noise_rule"] == "per-graph"  # the inverted graphs are drawn with the true noise
    rel = r["relation_iou_vs_true_graph"]
    assert r["n_graphs"] == 6 and rel["true"] == pytest.approx(1.0)  # the oracle reads the true renders exactly
    if reads:
        assert rel["inverted"] == pytest.approx(0.0) and r["relation_iou_drop"]["estimate"] == pytest.approx(1.0)
        assert r["pixel_change_inverted"] > 1.0
    else:
        assert rel["inverted"] == pytest.approx(1.0) and r["relation_iou_drop"]["estimate"] == pytest.approx(0.0)
        assert r["pixel_change_inverted"] == 0.0
    assert r["pixel_change_other_seed"] == 0.0  # the stand-ins ignore the seed
    k = r["triples_by_kind"]
    assert k["true"]["spatial"]["both_found"] == 1.0 and k["true"]["spatial"]["holds_given_found"] == 1.0
    assert k["inverted"]["spatial"]["holds_given_found"] == (0.0 if reads else 1.0)
    assert k["true"]["size"]["triples"] == 0 and k["true"]["size"]["both_found"] is None


def test_predicate_probe_needs_a_relation():
    g = SceneGraph.from_triples([("circle", ("red", "large"))], [])
    with pytest.raises(ValueError, match="no graph has a relation"):
        predicate_probe(None, [g], np.zeros((1, 64, 64, 3), np.uint8), [0], noise_keys=None)


def test_conditioning_gap_scores_the_inverted_predicates_on_the_same_noise(tmp_path):
    """A tiny RANDOM-INIT SD1.5-SG (plumbing): a graph without relations inverts to itself, so its inverted eps-MSE
    equals the true one exactly; with relations the text changes ("left of" -> "right of") and so does the loss."""
    from dataclasses import replace

    from sgalign.evaluation.conditioning_gap import conditioning_gap
    from sgalign.pipelines import StableDiffusionSGPipeline
    from sgalign.pipelines.tiny import make_tiny

    pipe = StableDiffusionSGPipeline.from_pretrained(make_tiny("sd15-sg", tmp_path / "tiny", seed=0))
    scenes = [s for s in sample_split("validation", 20, seed=0) if s.relations][:3]
    bare = conditioning_gap(pipe, [replace(s, relations=()) for s in scenes], seed=0)
    assert bare["eps_mse"]["inverted"] == bare["eps_mse"]["true"] and bare["gap_inverted"] == 0.0
    assert bare["embedding_change"]["inverted"] == 0.0 and bare["embedding_change"]["text_only"] == 0.0  # gate 0
    assert bare["embedding_change"]["empty"] > 0 and bare["embedding_change"]["shuffled"] > 0
    full = conditioning_gap(pipe, scenes, seed=0)
    assert full["eps_mse"]["inverted"] != full["eps_mse"]["true"] and full["embedding_change"]["inverted"] > 0
    assert set(full["eps_mse"]) == {"true", "text_only", "empty", "shuffled", "inverted"}


def test_attention_probe_on_the_shipped_base():
    """Shares of the object tokens' cross-attention inside their boxes: fractions, the same noise for every
    conditioning, and at low noise the shipped base attends inside its objects' boxes well above the even spread."""
    from sgalign.evaluation.conditioning_gap import attention_probe
    from sgalign.pipelines import load_pipeline
    from sgalign.world.paths import world_model_path

    pipe = load_pipeline(world_model_path(), arch="sd15")
    scenes = sample_split("validation", 8, seed=0)
    got = attention_probe(pipe, scenes, timesteps=(900, 200), n_resamples=50)
    assert got["n_graphs"] == 8 and sorted(got["by_t"]) == [200, 900]
    for v in got["by_t"].values():
        for k in ("true", "inverted", "text_only"):
            assert 0.0 <= v[k] <= 1.0
        assert 0.0 < v["uniform"] < 0.3  # objects are small: an even spread puts little mass in a box
        assert v["drop"]["low"] <= v["drop"]["estimate"] <= v["drop"]["high"]
        assert v["drop"]["estimate"] == pytest.approx(v["true"] - v["inverted"], abs=1e-6)
    assert got["by_t"][200]["true"] > 1.5 * got["by_t"][200]["uniform"]
    again = attention_probe(pipe, scenes, timesteps=(200,), n_resamples=50)
    assert again["by_t"][200]["true"] == got["by_t"][200]["true"]  # seeded: the same noise


def test_bench_with_no_graphs_runs_only_the_sample_free_probes(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_world_base", Path(__file__).parents[1] / "scripts" /
                                                  "bench_world_base.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = tmp_path / "RESULTS.md"
    mod.main(["--n-graphs", "0", "--gap-graphs", "4", "--attention-probe", "4", "--split", "validation",
              "--out", str(tmp_path / "o"), "--results-md", str(md), "--threads", "1"])
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["attention_probe"]["n_graphs"] == 4 and res["conditioning_gap"]["n_graphs"] == 4
    assert "iou" not in res and not (tmp_path / "o" / "images.npz").exists() and not md.exists()
    assert capsys.readouterr().out.count("attention t=") == 5


def test_predicate_blind_layouts_hold_at_chance():
    """Re-laid out ignoring their predicates, the spatial triples of 256 validation scenes hold about a quarter of the
    time (four 90° cones); the world's own layouts hold every one."""
    from sgalign.world import predicate_blind_hold, rules

    scenes = sample_split("validation", 256, seed=0)
    blind = predicate_blind_hold(scenes, seed=0)
    assert blind["triples"] > 200 and 0.18 < blind["holds"] < 0.36
    assert predicate_blind_hold(scenes, seed=0) == blind  # seeded
    own = [rules.holds(p, sc.objects[s].box, sc.objects[s].size, sc.objects[o].box, sc.objects[o].size)
           for sc in scenes for s, p, o in sc.relations if p in rules.SPATIAL]
    assert len(own) == blind["triples"] and all(own)


def test_bench_refuses_graph_guidance_without_the_graph(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_world_base", Path(__file__).parents[1] / "scripts" /
                                                  "bench_world_base.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for bad in (["--text-only", "--graph-guidance", "9"], ["--graph-guidance", "nan"],
                ["--text-only", "--graph-guidance-min-t", "600"], ["--text-only", "--graph-guidance-negative", "swapped"]):
        with pytest.raises(SystemExit) as e:
            mod.main(["--n-graphs", "2", "--out", str(tmp_path / "o"), "--results-md", ""] + bad)
        assert e.value.code == 2  # EXIT_USAGE, before anything is loaded or written
    assert not (tmp_path / "o").exists()

"""scripts/evaluate.py end to end on tiny random-init models: results.json, paired numbers, report, screenshot."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

FAST = ["--set", "inputs.n=3", "--set", "sampling.seeds=[0,1]", "--set", "sampling.steps=2",
        "--set", "sampling.torch_threads=1", "--set", "stats.n_resamples=200", "--set", "report.grid_graphs=2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from sgalign.pipelines.tiny import make_tiny

    root = tmp_path_factory.mktemp("models")
    return {name: make_tiny(arch, root / name, seed=seed) for name, arch, seed in
            [("sg_base", "sd15-sg", 0), ("sg_aligned", "sd15-sg", 1), ("t2i_base", "sd15", 0),
             ("t2i_aligned", "sd15", 1)]}


@pytest.fixture(scope="module")
def comp(models, tmp_path_factory):
    import evaluate

    out = tmp_path_factory.mktemp("eval_comp")
    evaluate.main(["--task", "compositional", "--model", str(models["sg_aligned"]), "--baseline",
                   str(models["sg_base"]), "--config", str(REPO / "configs/evaluate/world_compositional.yaml"),
                   *FAST, "--set", "compositional.fid_features=random-init", "--set", "compositional.fid_resamples=20",
                   "--out", str(out)])
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """An UNTRAINED tiny world-CLIP folder (no training_record.json): must be reported as a fallback."""
    from transformers import CLIPModel

    from sgalign.scene_graph import clip_tokenizer
    from sgalign.world.models.clip import save_world_clip, world_clip_config

    torch.manual_seed(0)
    model = CLIPModel(world_clip_config(text_width=32, vision_width=32, layers=1, projection_dim=16)).eval()
    return save_world_clip(model, clip_tokenizer(), tmp_path_factory.mktemp("clip") / "world-clip")


@pytest.fixture(scope="module")
def t2i(models, tiny_clip, tmp_path_factory):
    import evaluate

    out = tmp_path_factory.mktemp("eval_t2i")
    evaluate.main(["--task", "t2i", "--model", str(models["t2i_aligned"]), "--baseline", str(models["t2i_base"]),
                   *FAST, "--set", f"t2i.world_clip_path={tiny_clip}", "--out", str(out)])
    return out, json.loads((out / "results.json").read_text())


def test_compositional_results_have_every_metric_protocol_and_provenance(comp, models):
    from sgalign.hashing import folder_sha256

    out, r = comp
    assert r["task"] == "compositional" and r["protocol"]["sampling"]["seeds"] == [0, 1]
    assert r["protocol"]["sampling"]["steps"] == 2 and r["protocol"]["inputs"]["n"] == 3
    assert r["resolved"]["resolution"] == [16, 16] and r["resolved"]["n_images_per_model"] == 6
    assert r["resolved"]["scheduler_class"] == "DDIMScheduler" and r["resolved"]["guidance_scale"] == 7.5
    # the world protocol takes the folder's guidance; a folder without one: the architecture's (SD1.5: 7.5)
    for role in ("model", "baseline"):
        for key in ("phrase/normalized", "label/normalized"):
            rep = r["metrics"]["iou"][role][key]
            assert set(rep["mean"]) == {"sg_iou", "entity_iou", "relation_iou"}
            assert len(rep["per_image"]) == 6 and rep["ci"]["sg_iou"]["n_resamples"] == 200
            for m, v in rep["mean"].items():
                assert v == pytest.approx(np.mean([p[m] for p in rep["per_image"]]))
        fid = r["metrics"]["fid"][role]
        assert np.isfinite(fid["fid"]) and fid["n_real"] == 3 and fid["n_fake"] == 6
        assert fid["ci"]["low"] <= fid["ci"]["high"]
    assert set(r["metrics"]["vs_baseline"]) == {"phrase/normalized", "label/normalized"}
    prov = r["provenance"]
    assert prov["models"]["model"]["sha256"] == folder_sha256(models["sg_aligned"])
    assert prov["models"]["baseline"]["sha256"] == folder_sha256(models["sg_base"])
    assert prov["models"]["model"]["sha256"] != prov["models"]["baseline"]["sha256"]
    assert prov["extractor"]["phrase"]["extractor"] == "world-oracle"
    assert prov["fid_features"]["choice"] == "random-init"
    assert any("random-init CNN" in f for f in prov["fallbacks"])
    assert "model: model folder 'sg_aligned' is RANDOM-INIT" in prov["fallbacks"]
    assert len(r["inputs"]["graphs"]) == 3 and r["inputs"]["ids"][0] == "30000000"


def test_images_are_the_protocol_graphs_and_seeds(comp, models):
    """The saved images equal a direct pipeline call on the same graphs, seeds and per-graph noise keys (image
    g*K + k), and results.json records the rule and the keys."""
    from sgalign.evaluation.sampling import input_noise_keys
    from sgalign.pipelines import StableDiffusionSGPipeline
    from sgalign.world import sample_split

    out, r = comp
    pipe = StableDiffusionSGPipeline.from_pretrained(models["sg_base"])
    pipe.set_progress_bar_config(disable=True)
    graphs = [sc.graph() for sc in sample_split("test", 3, seed=0)]
    keys = input_noise_keys(graphs)
    assert r["inputs"]["noise_keys"] == keys and r["resolved"]["noise_rule"]["rule"] == "per-graph"
    direct = pipe(graphs, seeds=[0, 1], noise_keys=keys, num_inference_steps=2, guidance_scale=7.5,
                  output_type="np").images
    saved = np.load(out / "images" / "baseline.npz")["images"]
    np.testing.assert_array_equal(saved, np.clip(np.rint(direct * 255), 0, 255).astype(np.uint8))


def test_per_image_scores_and_paired_differences_equal_direct_computation(comp):
    from sgalign.evaluation import GraphParserExtractor, paired_bootstrap_ci, sg_iou_scores
    from sgalign.scene_graph import LaionSGRecord, SceneGraph
    from sgalign.world import WorldOracle

    out, r = comp
    gts = [SceneGraph.from_record(LaionSGRecord.model_validate(g)) for g in r["inputs"]["graphs"]]
    per_gt = [g for g in gts for _ in range(2)]
    ex = GraphParserExtractor(WorldOracle(), granularity="phrase")
    vals = {}
    for role in ("model", "baseline"):
        imgs = np.load(out / "images" / f"{role}.npz")["images"]
        direct = [sg_iou_scores(g, ex.extract(im, g), "normalized", "phrase").to_dict() for im, g in
                  zip(imgs, per_gt)]
        assert direct == r["metrics"]["iou"][role]["phrase/normalized"]["per_image"]
        vals[role] = direct
    for m in ("sg_iou", "entity_iou", "relation_iou"):
        a = [d[m] for d in vals["model"]]
        b = [d[m] for d in vals["baseline"]]
        # graphs are the resampling unit: image g*K + k belongs to graph g
        ci = paired_bootstrap_ci(a, b, n_resamples=200, level=0.95, seed=0, groups=[i // 2 for i in range(len(a))],
                                 unit="graph (all seeds together)").to_dict()
        got = r["metrics"]["vs_baseline"]["phrase/normalized"][m]
        assert got == ci and got["n"] == 3
        assert got["estimate"] == pytest.approx(np.mean(a) - np.mean(b))
    assert r["metrics"]["resampling_unit"] == "graph (all seeds together)"
    assert r["metrics"]["iou"]["model"]["phrase/normalized"]["resampling_unit"] == "graph (all seeds together)"


def test_fid_equals_direct_feature_computation(comp):
    from sgalign.evaluation.fid import extract_features, fid_from_features
    from sgalign.evaluation.protocol import EvalProtocol
    from sgalign.evaluation.fid_features import build_fid_features
    from sgalign.world import render_array, sample_split

    out, r = comp
    proto = EvalProtocol.model_validate(r["protocol"])
    feats, _, _ = build_fid_features(proto)
    real = extract_features(torch.from_numpy(render_array(sample_split("test", 3, seed=0))).permute(0, 3, 1, 2), feats)
    fake = extract_features(torch.from_numpy(np.load(out / "images/model.npz")["images"]).permute(0, 3, 1, 2), feats)
    assert r["metrics"]["fid"]["model"]["fid"] == pytest.approx(fid_from_features(real, fake), rel=1e-9)
    fid = r["metrics"]["fid"]
    for role in ("model", "baseline", "floor"):  # every FID interval contains its estimate
        assert fid[role]["ci"]["low"] <= fid[role]["fid"] <= fid[role]["ci"]["high"]
    assert fid["model"]["ci"]["unit"].startswith("graph") and fid["floor"]["n_fake"] == 6
    base = extract_features(torch.from_numpy(np.load(out / "images/baseline.npz")["images"]).permute(0, 3, 1, 2),
                            feats)
    d = fid["vs_baseline"]["difference"]
    assert d["estimate"] == pytest.approx(fid_from_features(real, fake) - fid_from_features(real, base), rel=1e-9)
    assert d["low"] <= d["estimate"] <= d["high"] and 0 < fid["vs_baseline"]["p_value"] <= 1
    assert "permutation p" in (out / "report.md").read_text()


def test_report_has_tables_plots_and_grids(comp):
    out, r = comp
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "| granularity / mode | role | SG-IoU | Entity-IoU | Relation-IoU |" in md
    assert "delta SG-IoU" in md and "RANDOM-INIT" in md and "FID [95% CI]" in md
    for name in ("iou_phrase_normalized.png", "iou_paired_difference.png", "fid.png", "grid_000.png", "grid_001.png"):
        assert f"report_files/{name}" in md and (out / "report_files" / name).is_file()
    assert page.count("<table>") >= 4 and "src=\"report_files" not in page  # self-contained: nothing linked
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pngs) == 6  # 2 IoU plots (phrase, label), paired difference, FID, 2 grids
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert f"{r['metrics']['iou']['model']['phrase/normalized']['ci']['entity_iou']['estimate']:.3f}" in page


def test_t2i_scores_win_rates_and_fallbacks(t2i):
    from sgalign.evaluation import bootstrap_ci, win_rate

    out, r = t2i
    assert r["task"] == "t2i" and len(r["inputs"]["prompts"]) == 3
    prov = r["provenance"]
    assert any("no training_record.json" in f for f in prov["fallbacks"])  # the untrained tiny world-CLIP
    assert prov["scorers"]["world_clip"]["trained"] is False
    for name in ("world_reward", "world_clip"):
        a = np.array(r["metrics"]["scores"]["model"][name]["per_image"])
        b = np.array(r["metrics"]["scores"]["baseline"][name]["per_image"])
        assert a.shape == (6,)
        s = r["metrics"]["vs_baseline"][name]
        assert s["win_rate"]["estimate"] == pytest.approx(win_rate(a, b))
        assert s["wins"] + s["ties"] + s["losses"] == 6
        assert s["mean_difference"]["estimate"] == pytest.approx(a.mean() - b.mean())
        groups = [i for i in range(3) for _ in range(2)]  # a prompt's seeds resampled together
        assert r["metrics"]["scores"]["model"][name]["median"] == bootstrap_ci(
            a, np.median, n_resamples=200, seed=0, groups=groups, unit="prompt (all seeds together)").to_dict()
    assert r["metrics"]["resampling_unit"] == "prompt (all seeds together)"
    html = (out / "report.html").read_text()
    assert "win-rate of model" in html and html.count("data:image/png;base64,") == 4


def test_t2i_world_clip_scores_are_the_reward_backends(t2i, tiny_clip):
    """The world_clip scorer is the rewards' world-CLIP backend (one implementation): the same cosine per image."""
    from PIL import Image

    from sgalign.rewards.backends.world_clip import WorldCLIPSimilarity

    out, r = t2i
    sim = WorldCLIPSimilarity.from_pretrained(tiny_clip, device="cpu")
    prompts = [p for p in r["inputs"]["prompts"] for _ in range(2)]  # image g*K + k = prompt g
    for role in ("model", "baseline"):
        imgs = np.load(out / "images" / f"{role}.npz")["images"]
        direct = sim.similarity([Image.fromarray(a) for a in imgs], prompts)
        assert r["metrics"]["scores"][role]["world_clip"]["per_image"] == direct


def test_world_prompt_round_trip_and_errors():
    from sgalign.world.prompts import parse_world_prompt
    from sgalign.world import sample_split

    for sc in sample_split("test", 40, seed=1):
        g = sc.graph()
        back = parse_world_prompt(g.serialize())
        assert sorted(back.triples()) == sorted(g.triples())
        assert sorted(back.phrase(it) for it in back.items) == sorted(g.phrase(it) for it in g.items)
    with pytest.raises(ValueError, match="cannot read a world clause"):
        parse_world_prompt("a photo of a cat")


def test_results_json_is_written_atomically(tmp_path, monkeypatch):
    import os
    from functools import partial

    from sgalign.hashing import write_json_atomic

    path = tmp_path / "results.json"
    write = partial(write_json_atomic, path, allow_nan=False)  # as evaluate writes results.json / failure.json
    write({"a": 1})
    with pytest.raises(TypeError):
        write({"a": 2, "bad": object()})  # serialisation fails before any write
    with pytest.raises(ValueError):
        write({"a": float("nan")})

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write({"a": 3})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind
    write({"a": 4})
    assert json.loads(path.read_text()) == {"a": 4} and path.stat().st_mode & 0o044


def test_protocol_and_model_errors(models, tmp_path):
    from sgalign.config import ConfigError
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.evaluation.sampling import load_evaluated_model

    with pytest.raises(ConfigError, match="sampling.stepz"):
        load_protocol(None, ["sampling.stepz=3"])
    with pytest.raises(ConfigError, match="distinct"):
        load_protocol(None, ["sampling.seeds=[1,1]"])
    with pytest.raises(ConfigError, match="granularities"):
        load_protocol(None, ["compositional.extractor=chat"])
    p = load_protocol(str(REPO / "configs/evaluate/world_t2i.yaml"), ["inputs.n=5"], task="t2i")
    assert p.task == "t2i" and p.inputs.n == 5 and p.sampling.guidance_scale == 3.0
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):  # a text-only folder has no SG path
        load_evaluated_model(models["t2i_base"], "compositional")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_evaluated_model(tmp_path, "compositional")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (not a test dependency)")
def test_report_renders_in_headless_chromium(comp, tmp_path):
    out, _ = comp
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,2000", f"--screenshot={shot}",
                    (out / "report.html").as_uri()], check=True, capture_output=True, timeout=60)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1000)
    assert (img < 250).any(axis=-1).mean() > 0.05  # not a blank page: text, tables and images drawn


def test_lora_export_is_applied(models, tmp_path):
    """A trainer LoRA export (base folder + unet_lora/) loads with the adapter: same UNet output as the adapted
    UNet it was saved from, different from the base."""
    from peft import LoraConfig

    from sgalign.evaluation.sampling import load_evaluated_model
    from sgalign.hashing import folder_sha256

    folder = tmp_path / "lora_model"
    shutil.copytree(models["sg_base"], folder)
    src = load_evaluated_model(folder, "compositional").pipe.unet
    torch.manual_seed(0)
    src.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                               init_lora_weights=False))
    src.save_lora_adapter(str(folder / "unet_lora"))
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    loaded = load_evaluated_model(folder, "compositional")
    base = load_evaluated_model(models["sg_base"], "compositional")
    with torch.no_grad():
        want, got, plain = (u(x, t, c).sample for u in (src, loaded.pipe.unet, base.pipe.unet))
    torch.testing.assert_close(got, want)
    assert (got - plain).abs().max() > 1e-3
    assert loaded.info["lora"] and not base.info["lora"]
    assert loaded.info["sha256"] == folder_sha256(folder) != base.info["sha256"]


def test_fid_features_auto_picks_trained_world_clip_else_labelled_fallback(tiny_clip, tmp_path):
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.evaluation.fid_features import build_fid_features

    untrained = load_protocol(None, [f"compositional.world_clip_path={tiny_clip}"])
    feats, prov, fallbacks = build_fid_features(untrained)
    assert prov["choice"] == "random-init" and feats.num_features == 16 and "random-init CNN" in fallbacks[0]
    trained_dir = tmp_path / "trained-clip"
    shutil.copytree(tiny_clip, trained_dir)
    (trained_dir / "training_record.json").write_text("{}")
    feats, prov, fallbacks = build_fid_features(load_protocol(None, [f"compositional.world_clip_path={trained_dir}"]))
    assert prov["choice"] == "world-clip" and prov["trained"] and fallbacks == [] and feats.num_features == 16
    assert feats(torch.rand(2, 3, 16, 16)).shape == (2, 16)  # resized to the tower's 64 px inside
    forced = load_protocol(None, [f"compositional.world_clip_path={tiny_clip}", "compositional.fid_features=world-clip"])
    _, prov, fallbacks = build_fid_features(forced)
    assert prov["trained"] is False and "no training_record.json" in fallbacks[0]


def test_image_cache_serves_the_same_model_and_protocol_only(models, tmp_path, monkeypatch):
    from sgalign.evaluation import run as run_mod
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.evaluation.run import evaluate

    sets = ["inputs.n=2", "sampling.seeds=[0]", "sampling.steps=2", "sampling.torch_threads=1",
            "stats.n_resamples=20", "report.grid_graphs=1", "compositional.fid_features=random-init",
            "compositional.fid_resamples=5"]
    p = load_protocol(str(REPO / "configs/evaluate/world_compositional.yaml"), sets, task="compositional")
    cache = tmp_path / "cache"
    a = evaluate(models["sg_aligned"], tmp_path / "a", p, baseline=models["sg_base"], image_cache=cache)
    assert [a["provenance"]["models"][r]["images_from_cache"] for r in ("model", "baseline")] == [False, False]
    calls = []
    real = run_mod.generate
    monkeypatch.setattr(run_mod, "generate", lambda *x, **k: calls.append(1) or real(*x, **k))
    # another model against the same base: the base's images come from the cache, bit for bit
    b = evaluate(models["sg_base"], tmp_path / "b", p, baseline=models["sg_base"], image_cache=cache)
    assert len(calls) == 0 and b["provenance"]["models"]["baseline"]["images_from_cache"]
    base_a = np.load(tmp_path / "a" / "images" / "baseline.npz")["images"]
    assert np.array_equal(np.load(tmp_path / "b" / "images" / "baseline.npz")["images"], base_a)
    assert np.array_equal(np.load(tmp_path / "b" / "images" / "model.npz")["images"], base_a)
    assert b["metrics"]["iou"]["baseline"] == a["metrics"]["iou"]["baseline"]
    # another protocol (other noise seed): a new entry, generated
    p2 = load_protocol(str(REPO / "configs/evaluate/world_compositional.yaml"), [*sets, "sampling.seeds=[1]"],
                       task="compositional")
    c = evaluate(models["sg_aligned"], tmp_path / "c", p2, baseline=models["sg_base"], image_cache=cache)
    assert len(calls) == 2 and not c["provenance"]["models"]["baseline"]["images_from_cache"]
    assert len(list(cache.glob("*.npz"))) == 4 and not list(cache.glob(".*"))  # no partial entry

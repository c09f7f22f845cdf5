"""SG-encoder pretraining (sgalign.training.pretrain_sg, run through sgalign.jobs.pretrain_sg): loss, LAION-SG bug
fixes, bad records, output folder."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from laion_sg_factory import _with_relation, valid_record
from sgalign.config import load_config
from sgalign.jobs.pretrain_sg import WorldRenderDataset, pretrain_components, run_pretrain_sg
from sgalign.training.pretrain_sg import (DataConfig, LaionSGImageDataset, ModelConfig, PretrainConfig,
                                         build_components, build_dataset, collate, diffusion_loss, lr_lambda,
                                         make_pipeline, param_groups, time_ids, vae_input)
from sgalign.pipelines import StableDiffusionSGPipeline
from sgalign.scene_graph import SceneGraph


def _write_images(folder, records, size=(24, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for r in records:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / r["name"])


def _laion_split(tmp_path, n_good=6):
    rng = random.Random(0)
    good = [_with_relation(valid_record(rng, 100 + i)) for i in range(n_good)]
    _write_images(tmp_path / "img", good)
    schema_bad = dict(_with_relation(valid_record(rng, 900)), score=0.5)  # score must be a string
    missing = _with_relation(valid_record(rng, 901))  # no image file
    corrupt = _with_relation(valid_record(rng, 902))
    (tmp_path / "img" / corrupt["name"]).write_bytes(b"not a png")
    records = good[:2] + [schema_bad] + good[2:4] + [missing, corrupt] + good[4:]
    (tmp_path / "split.json").write_text(json.dumps(records))
    return records


def test_bad_records_are_skipped_and_reported(tmp_path):
    records = _laion_split(tmp_path)
    ds = LaionSGImageDataset(tmp_path / "split.json", tmp_path / "img", resolution=16)
    assert len(ds) == 6
    assert [(r.index, r.field) for r in ds.rejects] == [(2, "score"), (5, "name"), (6, "name")]
    assert "missing" in ds.rejects[1].reason and "unreadable" in ds.rejects[2].reason
    assert ds.rejects[1].img_id == records[5]["img_id"]
    x, sg, hw = ds[0]
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1 and hw == (16, 24)  # original (h, w)
    assert isinstance(sg, SceneGraph)


def test_vae_input_and_time_ids_fix_laion_bugs():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(vae_input(x), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(vae_input(x, "[0,1]"), x)  # LAION-SG's bug, reproducible
    t = time_ids([(480, 640)], 512, 512)  # original (h, w) = (480, 640)
    assert t.dtype == torch.float32 and t.tolist() == [[480, 640, 0, 0, 512, 512]]
    assert time_ids([(480, 640)], 512, 512, "wh").tolist() == [[640, 480, 0, 0, 512, 512]]


def test_lr_schedule_and_param_groups():
    f = lr_lambda(4, 14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0)
    assert f(4) == pytest.approx(1.0) and f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    enc = pretrain_components(ModelConfig(tiny="sd15-sg"))["sg_encoder"]
    decay, no_decay = param_groups([enc], 0.2)
    ids = {id(p) for p in no_decay["params"]}
    assert id(enc.alpha_obj) in ids and id(enc.projection_mlp_1.weight) not in ids
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])


@pytest.mark.parametrize("arch", ["sd15-sg", "sdxl-sg"])
def test_steps_lower_the_loss_on_a_fixed_batch(arch):
    torch.manual_seed(0)
    pipe = make_pipeline(pretrain_components(ModelConfig(tiny=arch), seed=0))
    ds = WorldRenderDataset(resolution=16)
    batch = collate([ds[i] for i in range(4)])
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([100, 300, 500, 700])
    noise = torch.randn(4, 4, 8, 8, generator=g)
    pipe.unet.train().requires_grad_(True)
    pipe.sg_encoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(param_groups([pipe.unet, pipe.sg_encoder], 0.0), lr=2e-3)

    def loss():
        return diffusion_loss(pipe, batch, torch.Generator().manual_seed(1), timesteps=t, noise=noise)

    with torch.no_grad():
        before = float(loss())
    alpha0 = pipe.sg_encoder.alpha_obj.item()
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.8 * before, (before, after)
    assert pipe.sg_encoder.alpha_obj.item() != alpha0  # the gate gets a gradient: the graph branch is trained


def test_train_writes_a_loadable_pipeline(tmp_path):
    records = _laion_split(tmp_path)
    cfg = load_config(PretrainConfig, None, [
        "model.tiny=sd15-sg", "data.source=laion", f"data.split_file={tmp_path / 'split.json'}",
        f"data.image_dir={tmp_path / 'img'}", "data.resolution=16", f"train.output_dir={tmp_path / 'out'}",
        "train.batch_size=1", "train.grad_accum=2", "train.epochs=1", "train.log_every=0", "train.save_every=1",
        "train.train_unet=true", "train.uncond_prob=0.5", "train.ema_decay=0.9"])
    out = run_pretrain_sg(cfg, log=lambda s: None)
    rec = json.loads((out / "training_record.json").read_text())
    # 6 usable records / batch 1 / accumulation 2 = 3 optimiser steps; the schedule is sized from that
    assert rec["planned_steps"] == 3 and rec["steps"] == 3 and rec["complete"] and rec["rejects"] == 3
    assert rec["effective_batch"] == 2 and rec["machine"]["torch"] == torch.__version__
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["img_id"] for r in rejects[1:]] == [records[5]["img_id"], records[6]["img_id"]]
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "sg_encoder"):
        assert (out / part).exists(), part
    pipe = StableDiffusionSGPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    sg = SceneGraph.from_triples([("circle", ["red", "small"]), ("square", ["blue", "large"])],
                                 [(0, "left of", 1)])
    a = pipe([sg], seeds=[0], num_inference_steps=2, output_type="np").images
    b = pipe([sg], seeds=[0], num_inference_steps=2, output_type="np").images
    assert a.shape == (1, 16, 16, 3) and np.array_equal(a, b)
    assert pipe.sg_encoder.config.mode == "object"


def test_the_trainer_leaves_the_world_and_the_tiny_factory_to_the_command_layer():
    """training.pretrain_sg draws no world renders and makes no tiny components itself: the command layer
    (jobs.pretrain_sg) hands them to train; called without them it says where they come from."""
    with pytest.raises(ValueError, match="jobs.pretrain_sg"):
        build_components(ModelConfig(tiny="sd15-sg"))
    with pytest.raises(ValueError, match="jobs.pretrain_sg"):
        build_dataset(DataConfig(source="world"))

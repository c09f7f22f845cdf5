"""The docs writer (``sgalign.jobs.results_doc``): a base-bench result rendered as its RESULTS.md section, and the
section replacement every benchmark that updates docs goes through."""
from __future__ import annotations

import pytest

from sgalign.jobs.results_doc import PREAMBLE, render_base_section, write_section


def _ci(low: float, high: float) -> dict:
    return {"low": low, "high": high}


def _iou(ent: float, rel: float, sg: float) -> dict:
    return {"mean": {"entity_iou": ent, "relation_iou": rel, "sg_iou": sg},
            "ci": {"entity_iou": _ci(ent - 0.05, ent + 0.05), "relation_iou": _ci(rel - 0.02, rel + 0.02),
                   "sg_iou": _ci(sg - 0.01, sg + 0.01)}, "n_images": 8, "n_failed": 0}


RESULT = {  # a bench_world_base result plus the script's command and machine, small enough to check by hand
    "command": "python scripts/bench_world_base.py --n-graphs 4 --seeds 0 1", "model": "world-sd15-sg",
    "model_training": {"recipe": "python scripts/pretrain_world.py --out runs/x", "steps": 300, "wall_seconds": 99.6,
                       "stages": {"cache": {"graphs": 64, "wall_seconds": 2.0},
                                  "stage1": {"steps_done": 300, "wall_seconds": 90.4}}},
    "protocol": {"n_graphs": 4, "split": "test", "seeds": [0, 1], "n_images": 8, "resolution": 64,
                 "scheduler": "DDIMScheduler", "steps": 2, "eta": 0.0, "guidance_scale": 6.0,
                 "noise_rule": {"rule": "per-graph"}, "initial_noise_mean_scale": 0.4035},
    "iou": {"phrase": _iou(0.7, 0.2, 0.3), "label": _iou(0.9, 0.4, 0.5)},
    "spatial_hold": {"triples": 14, "both_found": 6, "holds": 3,
                     "holds_given_found": {"estimate": 0.5, "low": 0.25, "high": 0.75}},
    "mean_detected_objects": 3.125, "mean_gt_objects": 3.0,
    "fid_world_clip": {"fid": 12.345, "ci": _ci(10.0, 15.5), "n_real": 4, "n_fake": 8,
                       "features": {"num_features": 64}},
    "fid_renders_vs_renders": {"fid": 4.0},
    "conditioning_gap": {"n_graphs": 4, "eps_mse": {"true": 0.01, "text_only": 0.011, "empty": 0.02, "shuffled": 0.03},
                         "share_of_loss_explained": 0.5},
    "predicate_probe": None, "generation_seconds": 2.0, "total_seconds": 5.4,
    "machine": {"cpu": "AMD EPYC", "logical_cores": 2, "torch": "2.13.0+cpu", "device": "cpu", "torch_threads": 1},
}


def test_render_base_section_worked_example():
    text = render_base_section(RESULT)
    assert text.startswith("## World base model\n\nWorld SD1.5-SG (`world-sd15-sg`, 300 training steps in all) on 4 "
                           "test-split graphs\nx 2 seeds (8 images,\n64x64); DDIMScheduler 2 steps, eta 0, CFG 6.0\n")
    assert "| phrase | 0.700 [0.650, 0.750] | 0.200 [0.180, 0.220] | 0.300 [0.290, 0.310] |\n" \
           "| label | 0.900 [0.850, 0.950] | 0.400 [0.380, 0.420] | 0.500 [0.490, 0.510] |\n" in text
    assert "of the true graphs' 14 spatial triples, 6 had both phrases drawn, and 0.500 [0.250, 0.750] of those " \
           "hold (3).\n" in text
    assert "Mean objects detected per image 3.12 (ground\ntruth 3.00)." in text
    assert "renders of the same graphs: **12.35** [10.00, 15.50]\n(4 renders vs 8 images)." in text
    assert "eps-MSE true 0.0100, text only (no SG residual) 0.0110, empty text 0.0200, shuffled graphs 0.0300; the " \
           "conditioning explains 50 % of the empty-text loss.\n" in text
    assert "Predicate probe" not in text  # skipped: no paragraph
    assert "Entity-IoU 0.700 -> met; SG-IoU 0.300." in text
    assert "Model training: `python scripts/pretrain_world.py --out runs/x`: cache 64 graphs (2 s); stage1 300 steps " \
           "(90 s); in all 300 optimiser steps, 100 s wall." in text
    assert "Command: `python scripts/bench_world_base.py --n-graphs 4 --seeds 0 1` (5 s, generation 2 s)." in text
    assert render_base_section(RESULT, "Other title").startswith("## Other title\n")


def test_render_base_section_with_graph_guidance_probe_targets_and_lineage():
    """A base sampled with its folder's graph guidance, probed, and trained in resumed phases: the section names the
    sampler, checks issue 28's five targets, and says the model was not made by one command."""
    import copy

    r = copy.deepcopy(RESULT)
    r["protocol"].update(guidance_scale=3.0, graph_guidance_scale=25.0, graph_guidance_min_t=600,
                         graph_guidance_negative="text")
    r["predicate_probe"] = {"n_graphs": 4, "seeds": [0, 1],
                            "relation_iou_vs_true_graph": {"true": 0.3, "inverted": 0.1},
                            "relation_iou_drop": {"estimate": 0.2, "low": 0.05, "high": 0.3},
                            "pixel_change_inverted": 10.0, "pixel_change_other_seed": 20.0, "triples_by_kind": {}}
    r["model_training"]["lineage"] = [{"phase": "E", "stage1_steps": [0, 200], "target": "epsilon"},
                                      {"phase": "Z", "stage1_steps": [200, 300], "change": "--zero-snr-v"}]
    text = render_base_section(r)
    assert "CFG 3.0\nwith graph guidance 25 against the 'text' branch on the steps with t >= 600 (unconditional" in text
    assert ("Targets (issue 28) at phrase granularity: relation drop under inversion +0.200 [+0.050, +0.300] >= 0.10 "
            "with its interval above 0 -> met; spatial hold 0.500 >= 0.55 -> NOT met; Entity-IoU 0.700 >= 0.70 -> met; "
            "SG-IoU 0.300 <= 0.85 -> met; FID 12.35 <= 5.8 -> NOT met.") in text
    assert ("Model training: not one command: stage 1 in 2 resumed phases (E steps 0-200: epsilon; Z steps 200-300: "
            "--zero-snr-v; `training_record.json` `lineage`): cache 64 graphs") in text
    r["protocol"]["guidance_rescale"] = 0.7  # and with the guidance rescale it sampled with
    assert ("CFG 3.0\nwith graph guidance 25 against the 'text' branch on the steps with t >= 600 and guidance rescale "
            "0.7 (unconditional") in render_base_section(r)
    r["protocol"].update(graph_guidance_scale=None)
    assert "CFG 3.0\nwith guidance rescale 0.7 (unconditional" in render_base_section(r)


def test_write_section_replaces_only_its_own_section(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nIntro.\n\n## A\n\nold A\nmore old A\n\n## B\n\nB stays\n")
    write_section(doc, "A", "## A\n\nnew A\n")
    assert doc.read_text() == "# Results\n\nIntro.\n\n## A\n\nnew A\n\n## B\n\nB stays\n"
    write_section(doc, "B", "## B\n\nnew B\n")  # the last section: up to the end of the file
    assert doc.read_text() == "# Results\n\nIntro.\n\n## A\n\nnew A\n\n## B\n\nnew B\n"
    write_section(doc, "C", "## C\n\nC\n")  # a new title is appended
    assert doc.read_text().endswith("## B\n\nnew B\n\n## C\n\nC\n")


def test_write_section_creates_the_file_and_checks_the_heading(tmp_path):
    doc = tmp_path / "docs" / "RESULTS.md"
    write_section(doc, "World base model", render_base_section(RESULT))
    assert doc.read_text() == PREAMBLE + render_base_section(RESULT)
    with pytest.raises(ValueError, match="## A"):
        write_section(doc, "A", "## B\n\ntext\n")

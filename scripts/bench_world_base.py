"""Base-model quality of the shipped world SD1.5-SG (issue 4 item 4), measured with the world oracle.

    python scripts/bench_world_base.py [--n-graphs 512] [--seeds 0 1 2 3] [--steps 20] [--guidance 6.0]

The measurement is ``sgalign.jobs.base_bench.bench_world_base`` (its protocol below); the section is rendered and
written by ``sgalign.jobs.results_doc``. Writes ``OUT/results.json`` (numbers, protocol, command, machine),
``OUT/images.npz`` (the generated images) and the "World base model" section of ``docs/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import torch

from sgalign.jobs import base_bench
from sgalign.jobs.results_doc import render_base_section, write_section
from sgalign.machine import machine_info
from sgalign.world.paths import WEIGHTS_DIR
from sgalign.pipelines.sg_pipeline import check_guidance_rescale

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__ + "\n" + base_bench.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(WEIGHTS_DIR / "world-sd15-sg"))
    ap.add_argument("--clip", default=str(WEIGHTS_DIR / "world-clip"))
    ap.add_argument("--split", default="test", choices=("test", "validation"),
                    help="validation: for choosing protocol settings (e.g. --guidance) without touching test graphs")
    ap.add_argument("--n-graphs", type=int, default=512,
                    help="graphs to sample and score; 0: only the sample-free probes (--gap-graphs, --attention-probe)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--noise", choices=("per-graph", "shared"), default="per-graph",
                    help="per-graph: image k of each graph has its own noise, hashed from the graph and seed k "
                         "(sgalign.diffusion.noise); shared: seed k is the same noise for every graph (before v3)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=None,
                    help="default: the model folder's guidance_scale (model_index.json; a folder made before the "
                         "setting: its architecture's, 7.5; the epsilon base was read at 6)")
    ap.add_argument("--graph-guidance", type=float, default=None, metavar="S_G",
                    help="guide the graph's own term apart from the text's: uncond + s (text - uncond) + S_G (graph - "
                         "text), text = the serialised graph without the SG residual (not LAION-SG's). Default: the "
                         "model folder's (the world base sets one); S_G = --guidance is plain guidance")
    ap.add_argument("--graph-guidance-min-t", type=int, default=None, metavar="T",
                    help="graph guidance only on the sampling steps with t >= T, where the layout is decided (default: "
                         "the model folder's, else 0)")
    ap.add_argument("--graph-guidance-negative", choices=("text", "swapped"), default=None,
                    help="graph guidance's negative branch: text (the graph without the SG residual) or swapped (every "
                         "relation's subject and object exchanged); default: the model folder's, else text")
    ap.add_argument("--guidance-rescale", type=float, default=None, metavar="PHI",
                    help="guidance rescale in [0, 1] (Lin et al. 2024; default: the model folder's, else 0 = off)")
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic DDIM; 1: DDPM-like)")
    ap.add_argument("--graphs-per-call", type=int, default=16)
    ap.add_argument("--text-only", action="store_true",
                    help="sample the SG model's text path alone (no SG residual), on the same graphs and noise: the "
                         "SG path vs text alone comparison (LAION-SG's claim)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/bench_world_base")
    ap.add_argument("--results-md", default=str(REPO / "docs" / "RESULTS.md"), help="'' to skip")
    ap.add_argument("--section", default="World base model", help="the RESULTS.md section this run (re)writes")
    ap.add_argument("--machine-shared", action="store_true", help="record that other jobs shared the machine")
    ap.add_argument("--gap-graphs", type=int, default=512,
                    help="graphs for the conditioning gap (true vs text-only vs empty vs shuffled vs "
                         "inverted-predicate eps-MSE); 0 skips")
    ap.add_argument("--predicate-probe", type=int, default=0, metavar="N",
                    help="sample the first N graphs again with every predicate inverted, with the same noise, and score "
                         "both against the true graphs: does the model draw what the predicates say? 0 skips")
    ap.add_argument("--attention-probe", type=int, default=0, metavar="N",
                    help="on N graphs' noised renders, the share of each object's cross-attention inside its box, "
                         "true vs inverted predicates, by timestep: does placement come from the conditioning? 0 skips")
    args = ap.parse_args(argv)
    if args.text_only and (args.graph_guidance is not None or args.graph_guidance_min_t is not None
                           or args.graph_guidance_negative is not None):
        ap.error("--graph-guidance* guide the SG residual; --text-only samples without it")
    if args.guidance is not None and not math.isfinite(args.guidance):
        ap.error(f"--guidance must be a finite number, got {args.guidance}")
    if args.graph_guidance is not None and not math.isfinite(args.graph_guidance):
        ap.error(f"--graph-guidance must be a finite number, got {args.graph_guidance}")
    if args.guidance_rescale is not None:
        try:
            check_guidance_rescale(args.guidance_rescale, "--guidance-rescale")
        except ValueError as e:
            ap.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.n_graphs == 0:  # the sample-free probes alone (no IoU, FID or RESULTS section)
        measured = base_bench.probe_world_base(args.model, split=args.split, gap_graphs=args.gap_graphs,
                                               attention_probe=args.attention_probe)
    else:
        measured = base_bench.bench_world_base(
            args.model, split=args.split, n_graphs=args.n_graphs, seeds=args.seeds, steps=args.steps,
            guidance=args.guidance, eta=args.eta, noise=args.noise, text_only=args.text_only,
            graph_guidance=args.graph_guidance, graph_guidance_min_t=args.graph_guidance_min_t,
            graph_guidance_negative=args.graph_guidance_negative, guidance_rescale=args.guidance_rescale,
            graphs_per_call=args.graphs_per_call, gap_graphs=args.gap_graphs, predicate_probe=args.predicate_probe,
            attention_probe=args.attention_probe,
            clip=args.clip, images_npz=out / "images.npz")
    command = "python scripts/bench_world_base.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = {"command": command, **measured, "machine": machine_info(args.machine_shared or None)}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.results_md and args.n_graphs:
        write_section(args.results_md, args.section, render_base_section(result, args.section))
    if args.n_graphs:
        iou = result["iou"]
        print(json.dumps({"iou": {g: iou[g]["mean"] for g in iou}, "fid": result["fid_world_clip"]["fid"]}, indent=1))
    for t, v in ((result["attention_probe"] or {}).get("by_t") or {}).items():
        print(f"attention t={t}: inside the true boxes {v['true']:.3f} (inverted predicates {v['inverted']:.3f}, "
              f"text alone {v['text_only']:.3f}, uniform {v['uniform']:.3f}); drop {v['drop']['estimate']:+.4f} "
              f"[{v['drop']['low']:+.4f}, {v['drop']['high']:+.4f}]")


if __name__ == "__main__":
    main()

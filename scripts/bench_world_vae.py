"""World VAE benchmark: the blend test and reconstruction quality of one or more VAE folders, side by side.

    python scripts/bench_world_vae.py --vae NAME=DIR [NAME=DIR ...] [--n 500] [--results-md docs/RESULTS.md]

Blend test (``sgalign.world.models.vae.blend_test``): a centred 32 px square of each palette colour and the plain
background are encoded (posterior mode); the latents ``z_bg + l (z_c - z_bg)``, l = 0, 0.1, ..., 1, are decoded and
the centre 8x8 mean is read with the oracle's own colour model (blend-line fit; 'background' below alpha 0.15). A
colour passes iff every reading is the background or that colour. Colour <-> colour paths are reported (an RGB
blend of two palette colours can itself lie near a third colour's line, so they are not judged).
Reconstruction: PSNR and the oracle's exact-read rate on ``--n`` test renders (posterior mode).
Writes ``--out/results.json`` and the "World VAE" section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", nargs="+", required=True, metavar="NAME=DIR")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/bench_world_vae")
    ap.add_argument("--results-md", default=str(REPO / "docs" / "RESULTS.md"), help="'' to skip")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sgalign.hashing import read_record
    from sgalign.jobs.results_doc import render_vae_section, write_section
    from sgalign.machine import machine_info
    from sgalign.world.models.vae import blend_test, evaluate_world_vae, load_world_vae
    from sgalign.world.sampler import sample_split

    rows = {}
    scenes = sample_split("test", args.n, seed=0)
    for spec in args.vae:
        name, _, folder = spec.partition("=")
        if not folder:
            print(f"--vae {spec!r}: expected NAME=DIR", file=sys.stderr)
            return 2
        t0 = time.time()
        vae = load_world_vae(folder)
        rec = read_record(folder) or {}
        rows[name] = {"folder": folder, "recon": evaluate_world_vae(vae, scenes), "blend": blend_test(vae),
                      "trained": {k: rec.get(k) for k in ("command", "steps", "steps_done", "interp_weight",
                                                          "train_wall_s")},
                      "seconds": round(time.time() - t0, 1)}
        b = rows[name]["blend"]
        print(f"{name}: PSNR {rows[name]['recon']['psnr_db']:.2f} dB, oracle exact "
              f"{rows[name]['recon']['oracle_objects_exact']:.3f}, blend test "
              f"{'passes' if b['passes'] else 'FAILS'} "
              f"({sum(v['passes'] for v in b['background'].values())}/{len(b['background'])} colours)")
    command = "python scripts/bench_world_vae.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "n_test_renders": args.n, "vaes": rows, "machine": machine_info()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.results_md:
        write_section(args.results_md, "World VAE", render_vae_section(result))
    print(f"next: python scripts/bench_world_base.py  (results: {out / 'results.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

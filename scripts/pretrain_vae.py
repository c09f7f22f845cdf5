"""Train the world VAE (a small AutoencoderKL, 64x64 RGB -> 4x16x16) from scratch on shapes-world renders.

    python scripts/pretrain_vae.py --out sgalign/world/weights/world-vae --steps 1000 --batch 16 --seed 0

Then sets ``scaling_factor`` = 1 / std of latents (posterior samples of validation-split renders) in the config,
saves with ``save_pretrained`` (safetensors) and writes ``training_record.json``: seed, steps, batch, wall time,
machine, and the test metrics of the saved checkpoint -- reconstruction MSE / PSNR and the oracle's accuracy on
reconstructed test renders (generated images go through this decoder, so this is the key figure).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from sgalign.machine import machine_info
from sgalign.world.models.record import write_record
from sgalign.world.models.vae import VaeTrainArgs, blend_test, evaluate_world_vae, latent_scaling_factor, load_world_vae, \
    train_world_vae
from sgalign.world.sampler import sample_split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--init", default=None, help="fine-tune this VAE folder instead of training from scratch")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--interp-weight", type=float, default=1.0,
                    help="latent-interpolation consistency weight (0: plain L1 + KL, the control)")
    ap.add_argument("--eval-n", type=int, default=500, help="test-split graphs for the final metrics")
    ap.add_argument("--scale-n", type=int, default=500, help="validation-split renders for scaling_factor")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-blend-test", action="store_true", help="skip the blend test in the record (smoke runs)")
    ap.add_argument("--note", default="", help="free text stored in the record (e.g. 'shared machine')")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    targs = VaeTrainArgs(steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr, kl_weight=args.kl_weight,
                         interp_weight=args.interp_weight, init=args.init, warmup=args.warmup)
    t0 = time.perf_counter()
    bar = tqdm(total=args.steps, desc="world VAE", dynamic_ncols=True)

    def progress(step: int, stats: dict[str, float]) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(l1=f"{stats['l1']:.4f}", mse=f"{stats['mse']:.5f}")

    vae, history = train_world_vae(targs, progress=progress)
    bar.close()
    train_s = time.perf_counter() - t0
    scale = latent_scaling_factor(vae, sample_split("validation", args.scale_n, seed=0), seed=args.seed)
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(args.out, safe_serialization=True)
    vae = load_world_vae(args.out)  # metrics of the checkpoint as shipped
    metrics = evaluate_world_vae(vae, sample_split("test", args.eval_n, seed=0))
    blend = None if args.no_blend_test else blend_test(vae)
    tail = history[-50:]
    record = {"model": "world VAE", "command": "python scripts/pretrain_vae.py " + shlex.join(
                  argv if argv is not None else sys.argv[1:]),
              **asdict(targs), "train_wall_s": round(train_s, 1),
              "total_wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info(), "note": args.note,
              "params": sum(p.numel() for p in vae.parameters()), "latent_shape": [4, 16, 16],
              "scaling_factor": scale, "scaling_factor_from": f"1/std of posterior samples, {args.scale_n} "
                                                              "validation-split renders (sampler seed 0)",
              "final_train": {k: sum(h[k] for h in tail) / max(len(tail), 1) for k in ("loss", "l1", "kl", "mse")},
              "test_metrics": {"split": "test", "sampler_seed": 0, "reconstruction": "posterior mode", **metrics},
              "blend_test": blend}
    write_record(args.out, record)
    print({k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}, f"scaling_factor={scale:.5f}",
          f"blend test {'skipped' if blend is None else 'passes' if blend['passes'] else 'FAILS'}")


if __name__ == "__main__":
    main()

"""Train world-CLIP from scratch on (render, serialised graph) pairs of the shapes world's train split.

    python scripts/pretrain_clip.py --out sgalign/world/weights/world-clip --steps 1200 --batch 64 --seed 0

Writes the model (safetensors; see ``sgalign.world.models.clip`` for the folder layout) and
``training_record.json`` (seed, steps, batch, wall time, machine, final metrics: composition accuracy against
corrupted captions and retrieval on held-out test renders).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from sgalign.world.models.clip import ClipTrainArgs, evaluate_world_clip, load_world_clip, save_world_clip, \
    train_world_clip
from sgalign.machine import machine_info
from sgalign.world.models.record import write_record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-n", type=int, default=500, help="test-split graphs for the final metrics")
    ap.add_argument("--no-hard-negatives", action="store_true", help="plain CLIP loss (ablation)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--note", default="", help="free text stored in the record (e.g. 'shared machine')")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    targs = ClipTrainArgs(steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr,
                          hard_negatives=not args.no_hard_negatives)
    t0 = time.perf_counter()
    bar = tqdm(total=args.steps, desc="world-CLIP", dynamic_ncols=True)

    def progress(step: int, stats: dict[str, float]) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc_i2t']:.2f}")

    model, tokenizer, history = train_world_clip(targs, progress=progress)
    bar.close()
    train_s = time.perf_counter() - t0
    save_world_clip(model, tokenizer, args.out)
    model, tokenizer = load_world_clip(args.out)  # metrics of the checkpoint as shipped
    metrics = evaluate_world_clip(model, tokenizer, n=args.eval_n, seed=0)
    tail = history[-50:]
    record = {"model": "world-CLIP", "command": "python scripts/pretrain_clip.py " + shlex.join(
                  argv if argv is not None else sys.argv[1:]),
              **asdict(targs), "train_wall_s": round(train_s, 1),
              "total_wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info(), "note": args.note,
              "params": sum(p.numel() for p in model.parameters()),
              "final_train": {k: sum(h[k] for h in tail) / max(len(tail), 1) for k in ("loss", "acc_i2t", "scale")},
              "test_metrics": {"split": "test", "sampler_seed": 0, **metrics}}
    write_record(args.out, record)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


if __name__ == "__main__":
    main()

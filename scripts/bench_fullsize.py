"""Full-size benchmark (not a test): every method through the real trainer on the exact SD1.5-SG / SDXL-SG
architectures, RANDOM-INIT (configs/fullsize/, no weights anywhere); the cases, what differs from a real run and
the figures reported are described in ``sgalign.jobs.fullsize_bench``. Prints the machine, a markdown row per case
and where results.json is.

Profiles::

    --device cpu   256 px, fp32; SD1.5-SG full fine-tuning (Adafactor: AdamW's two fp32 moments on 860 M parameters
                   do not fit beside policy + reference + gradients); SDXL-SG LoRA (rank 16) with gradient
                   checkpointing and the frozen VAE / text encoders in fp32 (~16 GiB; full fine-tuning of 2.6 B
                   parameters does not fit 24 GiB; bf16 is emulated and slower on CPUs without native bf16, so
                   ``--frozen-dtype bf16`` only where the CPU has it); Inversion-DPO at N = 2 (its ~24N UNet-forward
                   equivalents per pair take hours at N = 80 here)
    --device cuda  bf16; SD1.5-SG at 512 px, SDXL-SG at 1024 px, both full fine-tuning, Inversion-DPO N = 80

    python scripts/bench_fullsize.py --count-only                  # parameter counts + FLOPs per forward (seconds)
    python scripts/bench_fullsize.py --device cpu --archs sd15-sg --tasks compositional --steps 1
    python scripts/bench_fullsize.py --device cuda --out runs/gpu_check/bench_fullsize
    python scripts/bench_fullsize.py --tiny                        # plumbing check on make_tiny configurations

``--inv-sweep 10,40,80``: Inversion-DPO peak memory at several N (constant-memory gradient: flat in N).
A case whose process exceeds ``--max-rss-gb`` is stopped and reported as skipped."""
from __future__ import annotations

import argparse

from sgalign.jobs.fullsize_bench import ARCHS, METHODS, TASKS, FullsizeBenchConfig, bench_fullsize, count_fullsize


def _names(csv: str) -> tuple[str, ...]:
    return tuple(x for x in csv.split(",") if x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per case (default: cpu 1, cuda 3)")
    ap.add_argument("--resolution", type=int, default=None, help="override the profile's resolution")
    ap.add_argument("--inv-steps", type=int, default=None, help="override the profile's Inversion-DPO N")
    ap.add_argument("--inv-sweep", default="", help="extra Inversion-DPO cases at these N (first arch with 'xl' "
                    "if any, compositional), e.g. 10,40,80")
    ap.add_argument("--frozen-dtype", choices=["fp32", "bf16"], default=None,
                    help="override the profile's dtype of the frozen VAE / text encoders (fp32 on a CPU without "
                         "native bf16: emulated bf16 is slower than fp32 there)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-rss-gb", type=float, default=19.0, help="stop a case whose process passes this RSS (CPU)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (default: by GPU name)")
    ap.add_argument("--count-only", action="store_true", help="parameter counts and FLOPs only (meta device)")
    ap.add_argument("--tiny", action="store_true", help="make_tiny configurations instead (plumbing check)")
    ap.add_argument("--in-process", choices=["auto", "yes", "no"], default="auto",
                    help="run the cases in this process (auto: on cuda); else one child process per case, whose "
                         "peak RSS is its own (CPU)")
    ap.add_argument("--out", default=None, help="results folder (default: a temporary folder); results.json there")
    a = ap.parse_args()
    cfg = FullsizeBenchConfig(
        device=a.device, archs=_names(a.archs), tasks=_names(a.tasks), methods=_names(a.methods), steps=a.steps,
        resolution=a.resolution, inv_steps=a.inv_steps, inv_sweep=tuple(int(n) for n in _names(a.inv_sweep)),
        frozen_dtype=a.frozen_dtype, threads=a.threads, max_rss_gb=a.max_rss_gb, timeout_s=a.timeout,
        peak_tflops=a.peak_tflops, tiny=a.tiny, in_process=a.in_process, out=a.out)
    if a.count_only:
        count_fullsize(cfg)
        return
    out, _ = bench_fullsize(cfg)
    print(f"results: {out / 'results.json'}", flush=True)


if __name__ == "__main__":
    main()

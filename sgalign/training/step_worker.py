"""Timed training runs of ``scripts/bench_step.py``: ``python step_worker.py`` serves "SPEC.json RESULT.json" lines
on stdin, answering one JSON line each.

The server imports torch, diffusers and the trainer once, then forks a child per configuration (imports cost ~10
CPU seconds; a fresh interpreter per run would dominate the bench on a shared CPU), so each run's peak RSS is its
own process's. The bench copies this file out and serves it from another git revision too (``PYTHONPATH`` = that
revision's worktree), so it uses only what every trainer since ccb35ef has: ``load_config``, ``TrainConfig``,
``Trainer(cfg)`` and ``Trainer._micro_step``.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

import torch

import sgalign
from sgalign.config import load_config
from sgalign.training.config import TrainConfig
from sgalign.training.trainer import Trainer


def run(spec: dict) -> dict:
    """Warm-up then timed micro-steps (batch preparation, method, backward, optimizer step) of one config: wall
    and process CPU seconds per step (one thread: CPU time is the work, steadier than wall time on a shared CPU)."""
    torch.set_num_threads(spec["threads"])
    cfg = load_config(TrainConfig, None, spec.get("overrides", []), base=spec["base"])
    tr = Trainer(cfg)
    times, cpu, rows, losses = [], [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        out = tr._micro_step()[0]
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= spec["warmup"]:
            f = out.forwards.as_dict()
            times.append(dt)
            cpu.append(dc)
            rows.append(f["grad"] + f["no_grad"])
            losses.append(float(out.loss.detach()))
    return {"step_s": times, "step_cpu_s": cpu, "unet_rows_per_pair": sum(rows) / len(rows), "losses": losses,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "sgalign": sgalign.__file__}


def serve() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        spec_path, result_path = line.split()
        pid = os.fork()
        if pid == 0:  # child: the trainer's log lines go to stderr, stdout is the protocol
            code = 1
            try:
                os.dup2(2, 1)
                with open(spec_path) as f:
                    result = run(json.load(f))
                with open(result_path, "w") as f:
                    json.dump(result, f)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)


if __name__ == "__main__":
    serve()

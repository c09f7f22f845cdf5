"""Training-step benchmark of this working tree against a git revision, interleaved (``scripts/bench_step.py``).

The revision is checked out into a temporary ``git worktree``; one ``step_worker`` server per tree (this file's
tree and the worktree, via ``PYTHONPATH``) runs every configuration with the same settings, alternating which side
goes first (A B, then B A, ...) so drifting load on a shared CPU hits both equally. Per configuration: step time
(process CPU seconds, one thread, and wall seconds) per pair, the median over rounds of each run's mean step;
speed-up: the median over rounds of the paired ratio; UNet rows per pair (``ForwardCounter``; a CFG
call counts both branches) and the child process's peak RSS. Data: a synthetic Pick-a-Pic parquet with reward
scores (``training.synthetic.write_pickapic``), the same file for both sides; step cost does not depend on the
pixels.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

REPO = Path(__file__).resolve().parents[2]
ModelName = Literal["world-sd15", "tiny-sdxl"]
MODELS: tuple[ModelName, ...] = ("world-sd15", "tiny-sdxl")
METHODS = ("diffusion-dpo", "inpo", "smpo", "inversion-dpo", "sft")
# method defaults except: SmPO's score range fits the synthetic scores (0.15-0.25); Inversion-DPO as in issue 19's
# comparison (N = 10, CFG 2, gradient checkpointing)
OPTIONS: dict[str, dict[str, Any]] = {"smpo": {"s_min": 0.1, "s_max": 0.3},
                                      "inversion-dpo": {"num_steps": 10, "guidance_scale": 2.0}}
OVERRIDES: dict[str, list[str]] = {"inversion-dpo": ["model.gradient_checkpointing=true"]}


@dataclass
class Config:
    model: ModelName
    method: str
    batch: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.method}-b{self.batch}"


@dataclass
class Side:
    """One tree's results: per configuration name, the runs' worker outputs."""
    tree: Path
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _Server:
    """A ``step_worker`` server running from ``tree``; ``run`` sends one spec and waits for its result."""

    def __init__(self, worker: Path, tree: Path, threads: int, log: Path):
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(worker)], cwd=tree, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        self._reply()

    def _reply(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"step worker exited; its log: {self.log}\n{self.log.read_text()[-3000:]}")
        return json.loads(line)

    def run(self, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
        sp, rp = tmp / "spec.json", tmp / "result.json"
        sp.write_text(json.dumps(spec))
        rp.unlink(missing_ok=True)
        self.proc.stdin.write(f"{sp} {rp}\n")
        self.proc.stdin.flush()
        if self._reply()["status"] != 0:
            raise RuntimeError(f"step worker run {spec['name']} failed; its log: {self.log}\n"
                               f"{self.log.read_text()[-3000:]}")
        return json.loads(rp.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def model_paths(tmp: Path) -> dict[str, Path]:
    from ..pipelines.tiny import make_tiny  # heavy (diffusers): keeps bench_step.py --help light
    from ..world.paths import world_model_path  # heavy (sgalign.world loads scipy): as make_tiny
    world = world_model_path()
    if not (world / "model_index.json").is_file():
        raise FileNotFoundError(f"no world SD1.5-SG at {world}")
    return {"world-sd15": world, "tiny-sdxl": make_tiny("sdxl", tmp / "tiny-sdxl")}


def spec_of(c: Config, model: Path, data: Path, out: Path, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    """The worker spec: the same trainer config for both trees (t2i task: the SD1.5-SG's text path)."""
    opts = OPTIONS.get(c.method, {})
    base = {"task": "t2i", "model": {"path": str(model)},
            "data": {"path": str(data), "batch_size": c.batch, "score_columns": ["ps_0", "ps_1"]},
            "method": {"name": c.method, "options": {c.method: opts} if opts else {}},
            "trainer": {"output_dir": str(out), "max_steps": 10 ** 6, "seed": 0},
            "checkpointing": {"every": 0, "final_pipeline": False},
            "logging": {"tqdm": False, "tensorboard": "off"}}
    return {"name": c.name, "base": base, "overrides": OVERRIDES.get(c.method, []), "threads": threads,
            "steps": steps, "warmup": warmup}


def compare(revision: str = "ccb35ef", models: tuple[str, ...] = MODELS, methods: tuple[str, ...] = METHODS,
            batches: tuple[int, ...] = (1, 4), steps: int = 6, warmup: int = 2, rounds: int = 2, threads: int = 1,
            log: Callable[[str], None] = print) -> tuple[Side, Side, list[Config]]:
    """Run every configuration on this tree (A) and ``revision`` (B), interleaved over ``rounds``."""
    from ..training.synthetic import write_pickapic  # heavy (diffusers via sgalign.training): as make_tiny
    tmp = Path(tempfile.mkdtemp(prefix="bench_step_"))
    wt = tmp / f"tree-{revision}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), revision], check=True,
                   capture_output=True)
    servers: list[_Server] = []
    try:
        paths = model_paths(tmp)
        data = write_pickapic(tmp / "pickapic.parquet", rows=64, size=64, seed=0, scores=True)
        worker = tmp / "step_worker.py"  # one copy of the worker code for both trees
        shutil.copy(Path(__file__).parents[1] / "training" / "step_worker.py", worker)
        sides = {"A": Side(REPO), "B": Side(wt)}
        servers = [_Server(worker, REPO, threads, tmp / "worker-A.log"),
                   _Server(worker, wt, threads, tmp / "worker-B.log")]
        srv = dict(zip("AB", servers))
        configs = [Config(m, meth, b) for m in models for b in batches for meth in methods]
        for r in range(rounds):
            for i, c in enumerate(configs):
                order = "AB" if (r + i) % 2 == 0 else "BA"
                for s in order:
                    out = tmp / f"run-{s}-{c.name}-{r}"
                    res = srv[s].run(spec_of(c, paths[c.model], data, out, steps, warmup, threads), tmp)
                    shutil.rmtree(out, ignore_errors=True)
                    sides[s].runs.setdefault(c.name, []).append(res)
                    log(f"round {r + 1}/{rounds} {c.name} [{s}] cpu s/step "
                        f"{statistics.median(res['step_cpu_s']):.3f} wall {statistics.median(res['step_s']):.3f} "
                        f"UNet rows/pair {res['unet_rows_per_pair']:.1f} peak RSS {res['peak_rss_mib']:.0f} MiB")
        return sides["A"], sides["B"], configs
    finally:
        for s in servers:
            s.close()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(wt)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(side: Side, c: Config) -> dict[str, float]:
    """Per run the mean step (every run draws the same t's, hence the same work), then the median over rounds."""
    runs = side.runs[c.name]
    mean = lambda xs: sum(xs) / len(xs)
    return {"cpu_s_per_pair": statistics.median(mean(r["step_cpu_s"]) for r in runs) / c.batch,
            "wall_s_per_pair": statistics.median(mean(r["step_s"]) for r in runs) / c.batch,
            "unet_rows_per_pair": mean([r["unet_rows_per_pair"] for r in runs]),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs)}


def speedup(a: Side, b: Side, c: Config, key: str = "step_cpu_s") -> float:
    """Median over rounds of the paired ratio B ÷ A (the two runs of a round ran back to back)."""
    return statistics.median(sum(rb[key]) / sum(ra[key]) for ra, rb in zip(a.runs[c.name], b.runs[c.name]))


def table(a: Side, b: Side, configs: list[Config], revision: str) -> str:
    """Markdown table; speed-up = revision's s/pair ÷ this tree's, paired per round (above 1: this tree is faster)."""
    rows = [f"| model | method | batch | CPU s/pair now | CPU s/pair {revision} | speed-up (CPU) | speed-up (wall) "
            f"| UNet rows/pair now / {revision} | peak RSS MiB now / {revision} |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        x, y = summarize(a, c), summarize(b, c)
        rows.append(f"| {c.model} | {c.method} | {c.batch} | {x['cpu_s_per_pair']:.4f} | {y['cpu_s_per_pair']:.4f} "
                    f"| {speedup(a, b, c):.2f}x | {speedup(a, b, c, 'step_s'):.2f}x "
                    f"| {x['unet_rows_per_pair']:.1f} / {y['unet_rows_per_pair']:.1f} "
                    f"| {x['peak_rss_mib']:.0f} / {y['peak_rss_mib']:.0f} |")
    return "\n".join(rows) + "\n"

"""Full-size benchmark (not a test): every method through the real trainer on the exact SD1.5-SG / SDXL-SG
architectures, RANDOM-INIT (configs/fullsize/, no weights anywhere); ``scripts/bench_fullsize.py`` is its command
line (the profiles per device are in its help).

Each case (architecture x task x method) runs ``sgalign.training.trainer.train`` (what ``scripts/train.py`` calls)
in its own process (``python -m sgalign.jobs.fullsize_bench CASE``), or in this one (``in_process``), for a few
optimizer steps of one pair each on synthetic placeholder data. Only two things differ from a real run, both outside
the step: the model "loading" builds seeded random weights from the configuration folder
(``sgalign.models.fullsize``), and the final checkpoint is not written (it is disk I/O, not the step). Method options
are the recipes' (configs/recipes/<arch or its t2i family>/<method>.yaml), Inversion-DPO with the constant-memory
gradient. Reported per case: s/step (steady: the steps after the first when there are several), pairs/s, peak memory
(the trainer's own figure: CUDA max allocated, else the process's peak RSS), UNet forwards per pair (the methods'
counters), and on a GPU the achieved TFLOP/s (UNet FLOPs counted on the meta device x forwards, backward = 2
forwards, +1 forward per grad forward under gradient checkpointing) and MFU against the bf16 peak.

``bench_fullsize(cfg)`` runs the cases and writes ``results.json`` after each; ``count_fullsize(cfg)`` reports the
parameter counts and FLOPs per UNet forward only (meta device).
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from ..config import load_config
from ..machine import machine_info

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ("sd15-sg", "sdxl-sg")
METHODS = ("diffusion-dpo", "sft", "inpo", "smpo", "inversion-dpo")
TASKS = ("compositional", "t2i")
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1}  # dense bf16, SXM where it applies
TABLE_HEADER = ("| arch | task | method | res | set-up | s/step | pairs/s | peak mem GB | UNet fwd/pair | TFLOP/s "
                "| MFU |\n|---|---|---|---|---|---|---|---|---|---|---|")
Log = Callable[[str], None]


@dataclass
class FullsizeBenchConfig:
    """What to run: the cases are archs x tasks x methods (+ the Inversion-DPO sweep), on the device's profile
    (``profile``) with the overrides set here."""

    device: Literal["cpu", "cuda"] | None = None  # None: cuda when available
    archs: tuple[str, ...] = ARCHS
    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS  # empty: only the inv_sweep cases
    steps: int | None = None  # optimizer steps per case (None: cpu 1, cuda 3)
    resolution: int | None = None  # overrides the profile's
    inv_steps: int | None = None  # overrides the profile's Inversion-DPO N
    inv_sweep: tuple[int, ...] = ()  # extra Inversion-DPO cases at these N (first arch with "xl", compositional)
    frozen_dtype: Literal["fp32", "bf16"] | None = None  # overrides the profile's frozen VAE / text encoder dtype
    threads: int = 1
    max_rss_gb: float = 19.0  # a case process past this RSS is stopped (child processes only)
    timeout_s: float = 3600.0  # per case (child processes only)
    peak_tflops: float | None = None  # bf16 dense peak for MFU (None: by GPU name)
    tiny: bool = False  # make_tiny configurations instead (plumbing check)
    in_process: Literal["auto", "yes", "no"] = "auto"  # auto: in this process on cuda
    out: str | Path | None = None  # results folder (None: a temporary folder)


def _print(msg: str) -> None:
    print(msg, flush=True)


def profile(device: str, arch: str) -> dict:
    """Resolution, precision and training set-up of ``arch`` on ``device`` (the script's help)."""
    if device == "cpu":
        xl = arch.startswith("sdxl")
        return {"resolution": 256, "mixed_precision": "no", "inv_steps": 2, "optimizer": "adafactor",
                "train_unet": "lora" if xl else "full", "gradient_checkpointing": True,
                "frozen_dtype": "fp32"}  # bf16 is emulated (slower than fp32) on CPUs without native bf16
    return {"resolution": 1024 if arch.startswith("sdxl") else 512, "mixed_precision": "bf16", "inv_steps": 80,
            "optimizer": "adafactor", "train_unet": "full", "gradient_checkpointing": True, "frozen_dtype": "bf16"}


def recipe_options(arch: str, task: str, method: str) -> dict:
    """The recipe's method options (compositional: the -sg recipe, t2i: the plain family's)."""
    fam = arch if task == "compositional" else arch.removesuffix("-sg")
    doc = yaml.safe_load((ROOT / "configs" / "recipes" / fam / f"{method}.yaml").read_text())
    return dict(doc["method"]["options"].get(method, {}))


def case_config(c: dict) -> dict:
    """The TrainConfig of one case (a plain dict; validated by the child)."""
    opts = recipe_options(c["arch"], c["task"], c["method"])
    if c["method"] == "inversion-dpo":
        opts.update(num_steps=c["inv_steps"], gradient="constant-memory")
    if c["method"] == "smpo" and c["task"] == "compositional":
        opts.update(s_min=0.0, s_max=1.0)  # synthetic rewards in [0, 1]
    t2i = c["task"] == "t2i"
    return {
        "task": c["task"],
        "model": {"path": c["folder"], "train_unet": c["train_unet"], "train_sg_encoder": not t2i,
                  "gradient_checkpointing": c["gradient_checkpointing"], "frozen_dtype": c["frozen_dtype"],
                  "lora": {"rank": 16, "alpha": 16.0}},
        "data": {"path": "synthetic", "batch_size": 1, "resolution": c["resolution"], "synthetic_rows": 4,
                 **({"score_columns": ["ps_0", "ps_1"]} if t2i else {})},
        "method": {"name": c["method"], "options": {c["method"]: opts}},
        "optimizer": {"name": c["optimizer"], "lr": 1e-8, "warmup_steps": 0, "lr_scheduler": "constant"},
        "trainer": {"output_dir": c["out"], "max_steps": c["steps"], "mixed_precision": c["mixed_precision"]},
        "checkpointing": {"every": 0, "final_pipeline": False},
        "logging": {"tqdm": False, "tensorboard": "off"},
    }


# ---- one case ------------------------------------------------------------------------------------------------------
def run_case(c: dict) -> dict:
    """One case through the trainer, here (the child process's work)."""
    # heavy (diffusers, accelerate) and only on this path; the count-only report never imports them
    import sgalign.models.loading as loading
    import sgalign.training.trainer as trainer_mod
    from sgalign.models.fullsize import build_components
    from sgalign.training.config import TrainConfig

    torch.set_num_threads(c["threads"])
    dev = "cuda" if c["device"] == "cuda" else None
    bf16 = torch.bfloat16 if c["frozen_dtype"] == "bf16" else None
    built: dict = {}

    def model(path, arch=None, *, text_only=False, **_):  # the random-init "loading" (module docstring)
        built.update(build_components(path, dtype=bf16, unet_dtype=torch.float32, device=dev))
        comps = {k: v for k, v in built.items() if k != "sg_encoder"}
        if not text_only and "sg_encoder" in built:
            comps["sg_encoder"] = built["sg_encoder"].float()
        return loading.ModelComponents(comps, arch=loading.detect_arch(path), path=path)

    loading.load_model = trainer_mod.load_model = model  # the trainer binds it at import
    trainer_mod.save_checkpoint = lambda trainer, run_dir, step: None
    cfg = load_config(TrainConfig, None, [], base=case_config(c))
    t0 = time.perf_counter()
    res = trainer_mod.train(cfg)
    rows = [json.loads(x) for x in (Path(c["out"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    # pairs_per_s is cumulative from the loop start: t_k = k pairs / pps_k
    t = [(i + 1) / r["pairs_per_s"] for i, r in enumerate(rows)]
    steady = (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else t[0]
    s = res.summary
    return {"s_per_step": steady, "first_step_s": t[0], "pairs_per_s": 1.0 / steady, "peak_mem_gb": s["peak_mem_gb"],
            "fwd_per_pair": s["unet_forwards_per_pair"],
            "fwd_grad": sum(r.get("fwd/grad", 0.0) for r in rows) / len(rows),
            "fwd_no_grad": sum(r.get("fwd/no_grad", 0.0) for r in rows) / len(rows),
            "loss": s["final_loss"], "steps": res.step, "wall_s": time.perf_counter() - t0,
            "random_init": True, "cuda_device": torch.cuda.get_device_name(0) if dev else None}


def unet_flops(folder: Path, resolution: int) -> float:
    """FLOPs of one UNet forward of one latent at ``resolution`` (counted on the meta device)."""
    from diffusers import UNet2DConditionModel  # heavy: only when a figure is counted
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
        h = resolution // 2 ** (len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
        x, t = torch.randn(1, 4, h, h), torch.tensor([500])
        c = torch.randn(1, 77, cfg["cross_attention_dim"])
        kw = {}
        if cfg.get("addition_embed_type") == "text_time":
            pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]  # SDXL 1280
            kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}
        with FlopCounterMode(display=False) as fc:
            unet(x, t, encoder_hidden_states=c, **kw)
    return float(fc.get_total_flops())


def _rss_gb(pid: int) -> float:
    total = 0
    try:
        import psutil  # optional dependency: without it the RSS guard reads 0
        p = psutil.Process(pid)
        total = p.memory_info().rss + sum(ch.memory_info().rss for ch in p.children(recursive=True))
    except Exception:  # the process ended between the poll and the read
        pass
    return total / 2 ** 30


def launch(c: dict, max_rss_gb: float, timeout_s: float) -> dict:
    """Run one case in a child process; stop it past ``max_rss_gb`` or ``timeout_s``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(c["threads"]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(c)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    log, peak, t0 = Path(c["out"] + ".log"), 0.0, time.time()
    with log.open("w") as f:
        lines: list[str] = []

        def pump():
            for line in proc.stdout:
                f.write(line)
                f.flush()
                lines.append(line)
        th = threading.Thread(target=pump, daemon=True)
        th.start()
        reason = None
        while proc.poll() is None:
            peak = max(peak, _rss_gb(proc.pid))
            if peak > max_rss_gb:
                reason = f"skipped: the process passed {max_rss_gb:g} GiB (RSS {peak:.1f} GiB), stopped"
            elif time.time() - t0 > timeout_s:
                reason = f"skipped: past the {timeout_s:g} s limit, stopped"
            if reason:
                proc.kill()
                break
            time.sleep(0.5)
        proc.wait()
        th.join(timeout=5)
    for line in reversed(lines):
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "observed_rss_gb": peak}
    return {"error": reason or f"failed (exit {proc.returncode}); see {log}", "observed_rss_gb": peak}


def run_here(c: dict) -> dict:
    """One case in this process (GPU: the trainer resets CUDA's peak-memory counter per run, so figures stay per
    case, and the import / CUDA start-up is paid once). A failure (e.g. out of memory) is reported, not raised."""
    from accelerate.state import AcceleratorState  # heavy: only on the in-process path
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return run_case(c)
    except Exception as e:  # noqa: BLE001  (a benchmark row, not a crash of the whole table)
        return {"error": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- the whole bench -----------------------------------------------------------------------------------------------
def tiny_folders(tmp: Path) -> dict[str, Path]:
    """make_tiny folders stand in for the configuration folders (plumbing only)."""
    from ..pipelines.tiny import make_tiny  # heavy (diffusers): only for the plumbing check
    return {a: make_tiny(a, tmp / a, sg_mode="faithful" if a == "sdxl-sg" else "object") for a in ARCHS}


@dataclass
class _Setup:
    device: str
    out: Path
    folders: dict[str, Path]
    info: dict[str, Any]


def _set_up(cfg: FullsizeBenchConfig, log: Log) -> _Setup:
    """The device, the results folder, the model folders of ``cfg.archs``, and the machine (logged)."""
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out or tempfile.mkdtemp(prefix="bench_fullsize_"))
    out.mkdir(parents=True, exist_ok=True)
    archs = list(cfg.archs)
    folders = tiny_folders(out / "tiny-models") if cfg.tiny else {x: ROOT / "configs" / "fullsize" / x for x in archs}
    folders = {k: v for k, v in folders.items() if k in archs}
    info = machine_info()
    log("machine: " + " | ".join(f"{k} {v}" for k, v in info.items()))
    log("models: RANDOM-INIT " + ("make_tiny configurations (plumbing check)" if cfg.tiny else
                                  "exact full-size architectures from configs/fullsize/"))
    return _Setup(device, out, folders, info)


def count_fullsize(cfg: FullsizeBenchConfig, log: Log = _print) -> None:
    """Parameter counts of each arch against the released model's, and FLOPs per UNet forward at the profile's
    (or ``cfg.resolution``) resolution, on the meta device."""
    # heavy (diffusers): keeps bench_fullsize.py --help light
    from ..models.fullsize import REFERENCE_COUNTS, parameter_counts
    s = _set_up(cfg, log)
    resolutions = sorted({cfg.resolution or profile(s.device, x)["resolution"] for x in cfg.archs})
    for arch, folder in s.folders.items():
        counts = parameter_counts(folder)
        log(f"{arch} (RANDOM-INIT, {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}): "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        want = REFERENCE_COUNTS.get(arch, {})
        for k, v in want.items():
            log(f"  {k}: {counts[k]:,} vs the released model's {v:,}: {'equal' if counts[k] == v else 'DIFFERENT'}")
        for r in resolutions:
            log(f"  UNet forward, 1 latent at {r} px: {unet_flops(folder, r) / 1e12:.3f} TFLOP")


def cases(cfg: FullsizeBenchConfig, device: str) -> list[dict]:
    """The cases (profile + arch, task, method): archs x tasks x methods, then the Inversion-DPO sweep."""
    out = []
    for arch in cfg.archs:
        p = profile(device, arch)
        if cfg.tiny:
            p.update(resolution=16, inv_steps=2)
        p.update({k: v for k, v in (("resolution", cfg.resolution), ("inv_steps", cfg.inv_steps),
                                    ("frozen_dtype", cfg.frozen_dtype)) if v})
        for task in cfg.tasks:
            for m in cfg.methods:
                out.append({**p, "arch": arch, "task": task, "method": m})
    if cfg.inv_sweep:
        arch = next((x for x in cfg.archs if "xl" in x), cfg.archs[0])
        p = profile(device, arch) if not cfg.tiny else {**profile(device, arch), "resolution": 16}
        p.update({k: v for k, v in (("resolution", cfg.resolution), ("frozen_dtype", cfg.frozen_dtype)) if v})
        out += [{**p, "arch": arch, "task": "compositional", "method": "inversion-dpo", "inv_steps": n,
                 "sweep": True} for n in cfg.inv_sweep]
    return out


def setup_label(c: dict) -> str:
    """The set-up column of a case: trained part, checkpointing, optimizer, precision, N."""
    return (f"{c['train_unet']}{' +ckpt' if c['gradient_checkpointing'] else ''}, {c['optimizer']}, "
            f"{c['mixed_precision'] if c['mixed_precision'] != 'no' else 'fp32'}"
            + (", frozen bf16" if c["frozen_dtype"] == "bf16" else "")
            + (f", N={c['inv_steps']}" if c["method"] == "inversion-dpo" else ""))


def table_row(c: dict, setup: str, r: dict) -> str:
    """A case's markdown row (``TABLE_HEADER``); a skipped or failed case shows its reason."""
    if "error" in r:
        return f"| {c['arch']} | {c['task']} | {c['method']} | {c['resolution']} | {setup} | {r['error']} |||||"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a (CPU)"
    return (f"| {c['arch']} | {c['task']} | {c['method']} | {c['resolution']} | {setup} | {r['s_per_step']:.2f} "
            f"| {r['pairs_per_s']:.4f} | {r['peak_mem_gb']:.2f} | {r['fwd_per_pair']:.1f} | "
            f"{r['tflops_per_s']:.3f} | {mfu} |")


def bench_fullsize(cfg: FullsizeBenchConfig, log: Log = _print) -> tuple[Path, dict[str, Any]]:
    """Run every case, each row logged as it finishes and ``results.json`` in the results folder rewritten after
    each; returns (the results folder, what ``results.json`` holds)."""
    s = _set_up(cfg, log)
    steps = cfg.steps or (1 if s.device == "cpu" else 3)
    peak_tflops = cfg.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in s.info["device"]), None)
    here = cfg.in_process == "yes" or (cfg.in_process == "auto" and s.device == "cuda")
    flops: dict = {}
    doc: dict[str, Any] = {"machine": s.info, "random_init": True, "steps": steps, "peak_tflops_bf16": peak_tflops,
                           "results": []}
    log(TABLE_HEADER)
    for i, c in enumerate(cases(cfg, s.device)):
        name = f"{i:02d}-{c['arch']}-{c['task']}-{c['method']}" + (
            f"-N{c['inv_steps']}" if c["method"] == "inversion-dpo" else "")
        c = {**c, "device": s.device, "threads": cfg.threads, "steps": steps, "folder": str(s.folders[c["arch"]]),
             "out": str(s.out / name)}
        r = run_here(c) if here else launch(c, cfg.max_rss_gb, cfg.timeout_s)
        if "error" not in r:
            key = (c["arch"], c["resolution"])
            if key not in flops:
                flops[key] = unet_flops(s.folders[c["arch"]], c["resolution"])
            # forward + backward (2 forwards) per grad forward, + 1 recompute under gradient checkpointing
            per_pair = flops[key] * (r["fwd_no_grad"] + r["fwd_grad"] * (4 if c["gradient_checkpointing"] else 3))
            r["tflops_per_s"] = per_pair * r["pairs_per_s"] / 1e12
            r["mfu"] = r["tflops_per_s"] / peak_tflops if (s.device == "cuda" and peak_tflops) else None
        setup = setup_label(c)
        doc["results"].append({"case": {k: v for k, v in c.items() if k not in ("folder",)}, "setup": setup, **r})
        log(table_row(c, setup, r))
        (s.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return s.out, doc


if __name__ == "__main__":  # a child process of ``launch``: one case, its result on the last line
    print("RESULT " + json.dumps(run_case(json.loads(sys.argv[1]))), flush=True)

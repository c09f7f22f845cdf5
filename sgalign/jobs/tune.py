"""Validation-only tuning of one method (issue 20, item 1): a small grid, each cell evaluated on world *validation*
graphs, the choice = the best validation SG-IoU among cells whose FID is not above the base's x ``fid_guard``.

    grid = TuneGrid("diffusion-dpo", betas=[500, 2000, 5000], lrs=[1e-5, 3e-5], steps=[50, 100, 150])
    record = run_tune("runs/tune-dpo", grid, budget="demo", base_model="runs/world-demo/base")

Cost: one training run per (β, lr, option set), ``max(steps)`` steps, checkpointed at every listed step; each
listed step is evaluated from its checkpoint's policy weights (with the trainer's constant-after-warmup schedule a
checkpoint at step s is what an s-step run would end with; EMA is off in the world config -- with EMA on, the
final model is the EMA copy and the checkpoints are not). The base is evaluated once, alone, on the same graphs and
seeds. Stages are skipped on a rerun once finished, as in the world job (``base/`` and ``pairs/`` are the job's).

Output in ``out_dir``: ``grid.json`` (the grid, the budget, every cell's figures, the base's, the choice and why),
``grid.md`` (the same as a table). ``write_config=True`` also writes the choice (β, option set, lr, steps) to a new
YAML, ``OUT/tuned.yaml`` or ``config_path``, that includes the task's world YAML (``write_tuned_config``): train it
with ``--config OUT/tuned.yaml``. No tracked config is edited.

``run_tune_draws(out_dir, grid, seeds=[0, 1, 2])``: the grid once per pair draw (``OUT/seed-<s>/``), each cell pooled
per validation graph over the draws and the choice made on the pool: at the demo budget the draw of the 96 pair
graphs moves SG-IoU more than the settings a grid compares.

``task="t2i"``: the same grid on world Pick-a-Pic pairs, each cell scored on world *validation* prompts by win-rate
over the base under the training reward (``world_reward``) and the held-out scorer (``world_clip``), intervals
resampling prompts. The choice: the highest training-reward win-rate among cells that do not lose on the held-out
scorer (its win-rate interval reaches 0.5); over steps this is early stopping chosen on validation.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import yaml

from ..config import apply_overrides
from ..evaluation.preference import summarize_preference
from ..evaluation.protocol import EvalProtocol
from ..evaluation.run import evaluate
from ..evaluation.sampling import check_same_noise
from ..evaluation.stats import paired_bootstrap_ci
from ..progress import quiet_library_bars
from .seeds import graph_deltas, per_image, pooled_ci
from .specs import (METRICS, TASK_CONFIGS, TRAIN_CONFIG, JobBudget, eval_protocol, method_training,
                    resolve_budget, split_method_id, train_config, trainer_method)
from .world_job import stage_base, stage_pairs, stage_pairs_variant

KEY = "phrase/normalized"  # the strict "colour size shape" SG-IoU: the headline
FID_GUARD = 1.10
TuneTask = Literal["compositional", "t2i"]
T2I_REWARD, T2I_HELDOUT = "world_reward", "world_clip"  # what the t2i pairs were labelled by / a scorer they were not

# Suggested option sets (issue 20: Inversion-DPO's N and points per pair, SmPO's smoothing range); {} = the YAML's
DEFAULT_OPTION_SETS: dict[str, list[dict[str, Any]]] = {
    "inversion-dpo": [{"num_steps": 10, "subsample": 2}, {"num_steps": 20, "subsample": 4}],
    "smpo": [{"s_min": 0.0, "s_max": 1.0}, {"s_min": 0.2, "s_max": 0.8}],
}


@dataclass
class TuneGrid:
    """One method's grid. Empty lists mean "the config's / budget's value" (one point)."""

    method: str  # a world job method id (``diffusion-dpo``, ``inversion-dpo``, ``smpo@gold`` ...)
    betas: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # checkpoints of one run per (β, lr, option set)
    option_sets: list[dict[str, Any]] = field(default_factory=lambda: [{}])  # method options per cell
    fid_guard: float = FID_GUARD  # a cell is eligible when its FID <= base FID x fid_guard
    task: TuneTask = "compositional"  # t2i: win-rates over the base on validation prompts (module docstring)
    # ``--set``-style trainer settings applied to every cell (e.g. "data.proportion_empty_prompts=0.2"): a grid
    # compares one such setting against another by running twice into two folders
    train_sets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if split_method_id(self.method)[1] is not None and self.task != "compositional":  # unknown id: ValueError
            raise ValueError(f"tune grid {self.method!r}: pairs variants exist for the compositional task only")
        if self.task not in get_args(TuneTask):
            raise ValueError(f"tune grid task {self.task!r}: choose one of {', '.join(get_args(TuneTask))}")
        if any(s < 1 for s in self.steps):
            raise ValueError(f"tune grid steps {self.steps}: every step must be >= 1")
        if any(x <= 0 for x in [*self.betas, *self.lrs]):
            raise ValueError(f"tune grid betas {self.betas} / lrs {self.lrs}: every value must be > 0")
        if not self.option_sets or self.fid_guard < 1.0:
            raise ValueError("tune grid: option_sets needs at least one set ({} = the config's) and fid_guard >= 1")


def _log(msg: str) -> None:
    print(f"[tune] {msg}", flush=True)


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def cell_name(beta: float | None, lr: float, options: dict[str, Any]) -> str:
    """A folder name for a training run of the grid: its β, lr and option values."""
    parts = ([f"beta{_fmt_num(beta)}"] if beta is not None else []) + [f"lr{_fmt_num(lr)}"]
    parts += [f"{k}{_fmt_num(v) if isinstance(v, (int, float)) else v}" for k, v in sorted(options.items())]
    return "-".join(parts)


def _model_at(run: Path, step: int, final_step: int, base: Path, dst: Path) -> Path:
    """A loadable model folder of the run's policy at ``step``: ``final/`` at the last step, else the base with the
    checkpoint's trained parts (``policy/unet``, ``policy/sg_encoder`` ...) swapped in, as ``export_pipeline``."""
    if step == final_step:
        return run / "final"
    ckpt = run / "checkpoints" / f"step-{step:08d}" / "policy"
    if not ckpt.is_dir():
        raise FileNotFoundError(f"{run}: no checkpoint at step {step} ({ckpt}); the run's checkpoint interval does "
                                "not hit it (rerun in a fresh out_dir)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(base, dst, ignore=shutil.ignore_patterns(".*", "snapshot.json"))
    for part in ckpt.iterdir():
        if (dst / part.name).exists():
            shutil.rmtree(dst / part.name)
        shutil.copytree(part, dst / part.name)
    return dst


def _figures(results: dict[str, Any], role: str = "model") -> dict[str, Any]:
    """SG-IoU family estimates (``KEY``, else the first granularity) and FID of one role of an evaluation."""
    iou = results["metrics"]["iou"][role]
    key = KEY if KEY in iou else next(iter(iou))
    fid = results["metrics"]["fid"].get(role)
    return {"key": key, **{n: iou[key]["ci"][n]["estimate"] for n in ("sg_iou", "entity_iou", "relation_iou")},
            "fid": fid["fid"] if fid else None}


def _figures_t2i(results: dict[str, Any], base: dict[str, Any], n_resamples: int, seed: int) -> dict[str, Any]:
    """Per scorer: the win-rate of the cell over the base on the same prompts and seeds (ties half), with an interval
    resampling prompts, and the paired mean difference."""
    k = len(results["protocol"]["sampling"]["seeds"])
    groups = [i for i in results["inputs"]["ids"] for _ in range(k)]
    out: dict[str, Any] = {}
    for name, sc in results["metrics"]["scores"]["model"].items():
        ps = summarize_preference(np.asarray(sc["per_image"]), np.asarray(base["metrics"]["scores"]["model"][name]
                                                                          ["per_image"]),
                                  metric=name, groups=groups, n_resamples=n_resamples, seed=seed, unit="prompt")
        out[name] = {"win_rate": ps.win_rate.to_dict(), "mean_difference": ps.mean_difference.to_dict()}
    return {"scorers": out, "fid": None}


def choose_t2i(cells: list[dict[str, Any]], reward: str = T2I_REWARD, heldout: str = T2I_HELDOUT) -> dict[str, Any]:
    """The t2i choice rule: among cells whose held-out win-rate interval reaches 0.5 (no measured loss there), the
    highest training-reward win-rate; ties go to fewer steps, then to grid order."""
    def wr(c: dict[str, Any], name: str) -> dict[str, Any]:
        return c["scorers"][name]["win_rate"]

    eligible = [c for c in cells if heldout not in c["scorers"] or wr(c, heldout)["high"] >= 0.5]
    if not eligible:
        return {"cell": None, "limit": None, "why": f"every cell loses on the held-out {heldout} (interval below 0.5)"}
    best = max(eligible, key=lambda c: (wr(c, reward)["estimate"], -c["step"], -cells.index(c)))
    why = (f"highest validation {reward} win-rate ({wr(best, reward)['estimate']:.3f}) among {len(eligible)} of "
           f"{len(cells)} cells that do not lose on the held-out {heldout}")
    return {"cell": best, "limit": None, "why": why}


def paired_delta(results: dict[str, Any], base: dict[str, Any], key: str, n_seeds: int, metric: str = "sg_iou",
                 n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired Δ ``metric`` (model − base) on the same validation images, 95 % interval resampling graphs with all
    their seeds together (image g*K + k is graph g, seed k): a grid's cells differ by a few hundredths, so each
    cell says whether its own change is resolved."""
    per = [per_image(res, "model", metric, key) for res in (results, base)]
    keep = ~(np.isnan(per[0]) | np.isnan(per[1]))
    groups = [i // n_seeds for i in range(per[0].size)]
    ci = paired_bootstrap_ci(per[0][keep], per[1][keep], n_resamples=n_resamples, seed=seed,
                             groups=[g for g, k in zip(groups, keep) if k], unit="graph (all seeds together)")
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high}


def choose(cells: list[dict[str, Any]], base_fid: float | None, fid_guard: float = FID_GUARD) -> dict[str, Any]:
    """The choice rule: among cells with FID <= base FID x ``fid_guard`` (all cells when FID was not computed),
    the highest validation SG-IoU; ties go to fewer steps, then to grid order. Returns {"cell", "limit", "why"}."""
    limit = None if base_fid is None or math.isnan(base_fid) else base_fid * fid_guard
    eligible = [c for c in cells if limit is None or (c["fid"] is not None and c["fid"] <= limit)]
    if not eligible:
        return {"cell": None, "limit": limit, "why": f"no cell has FID <= {limit:.3f} (base FID x {fid_guard})"}
    best = max(eligible, key=lambda c: (c["sg_iou"], -c["step"], -cells.index(c)))
    why = (f"highest validation SG-IoU ({best['sg_iou']:.4f}) among {len(eligible)} of {len(cells)} cells with FID "
           + (f"<= {limit:.3f} (base FID x {fid_guard})" if limit is not None else "not computed (no guard)"))
    return {"cell": best, "limit": limit, "why": why}


def run_tune(out_dir: str | Path, grid: TuneGrid, budget: str | JobBudget = "demo", seed: int = 0,
             base_model: str | Path | None = None, write_config: bool = False,
             config_path: str | Path | None = None, **budget_overrides: Any) -> dict[str, Any]:
    """Train and evaluate every cell of ``grid`` on validation graphs; write ``grid.json`` / ``grid.md``; return the
    record. ``write_config``: also write the choice to ``config_path`` (default ``OUT/tuned.yaml``), a new YAML
    that includes the task's world YAML (``write_tuned_config``)."""
    import diffusers  # noqa: F401  heavy: keeps tune light; here before quiet_library_bars, which then silences it

    quiet_library_bars()
    b = resolve_budget(budget, **budget_overrides)
    if b.eval_split == "test":  # validation picks, test reports: a tuning run never looks at test graphs
        b = replace(b, eval_split="validation")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(b.torch_threads)
    default_lr, default_steps = method_training(grid.method, b, grid.task)
    steps = sorted(set(grid.steps or [default_steps]))
    lrs = grid.lrs or [default_lr]
    betas: list[float | None] = list(grid.betas) or [None]
    _log(f"{grid.method}: {len(betas)} β x {len(lrs)} lr x {len(grid.option_sets)} option set(s) runs of "
         f"{steps[-1]} steps, evaluated at steps {steps} on {b.eval_graphs} validation graphs")
    _claim_tune_folder(out, grid, b, seed)
    base, pairs = _stage_inputs(out, grid, b, seed, base_model)
    protocol = eval_protocol(b, seed, grid.task)
    base_res = _evaluate_once(base, out / "eval" / "base", protocol, grid.method, "base")
    base_fig = _figures(base_res) if grid.task == "compositional" else {"fid": None}
    cells = []
    for beta, lr, opts in itertools.product(betas, lrs, grid.option_sets):
        cname = cell_name(beta, lr, opts)
        run = out / "train" / cname
        _train_cell(run, cname, grid, replace(b, lr=lr, train_steps=steps[-1]), seed, beta, opts,
                    math.gcd(*steps), base, pairs)
        summary = json.loads((run / "summary.json").read_text())
        for s in steps:
            dst = out / "eval" / cname / f"step-{s}"
            if not (dst / "results.json").exists():
                tmp = out / "models" / cname / f"step-{s}"
                _evaluate_once(_model_at(run, s, steps[-1], base, tmp), dst, protocol, grid.method,
                               f"{cname} step {s}")
                shutil.rmtree(tmp, ignore_errors=True)  # a model copy per step is only needed for its evaluation
            res = json.loads((dst / "results.json").read_text())
            check_same_noise({"eval/base": base_res, str(dst.relative_to(out)): res})
            cells.append({"cell": cname, "beta": beta, "lr": lr, "options": opts, "step": s,
                          **_cell_figures(res, base_res, grid.task, b, seed),
                          "train_summary": {k: summary.get(k) for k in ("seconds", "final_loss", "implicit_acc",
                                                                        "weight_drift")},
                          "results": str(dst.relative_to(out) / "results.json")})
    record = {"method": grid.method, "task": grid.task, "trainer_method": trainer_method(grid.method),
              "grid": asdict(grid), "steps": steps, "budget": asdict(b), "seed": seed, "base": base_fig,
              "base_snapshot": json.loads((base / "snapshot.json").read_text())}
    return _choose_and_write(out, record, cells, grid, write_config, config_path)


def _claim_tune_folder(out: Path, grid: TuneGrid, b: JobBudget, seed: int) -> None:
    """``tune.json``: a folder holds one method's grid at one budget and seed; cells of another would mix in
    silently, so another setup is refused."""
    setup = {"method": grid.method, "budget": asdict(b), "seed": seed,
             **({"task": grid.task} if grid.task != "compositional" else {}),
             **({"train_sets": grid.train_sets} if grid.train_sets else {})}
    setup_file = out / "tune.json"
    if setup_file.exists() and json.loads(setup_file.read_text()) != json.loads(json.dumps(setup)):
        raise ValueError(f"{out} holds a tuning run of another method/budget/seed (see {setup_file}); use a new "
                         "out_dir")
    setup_file.write_text(json.dumps(setup, indent=2) + "\n")


def _stage_inputs(out: Path, grid: TuneGrid, b: JobBudget, seed: int,
                  base_model: str | Path | None) -> tuple[Path, Path]:
    """The world job's ``base/`` and the grid's pairs (``pairs/``, or its gold / shuffled variant)."""
    base = stage_base(out, base_model)
    pairs = stage_pairs(out, base, b, seed, grid.task)
    variant = split_method_id(grid.method)[1]
    if variant is not None:
        pairs = stage_pairs_variant(out, pairs, variant, seed)
    return base, pairs


def _evaluate_once(model: Path, dst: Path, protocol: EvalProtocol, method: str, what: str) -> dict[str, Any]:
    """``dst/results.json`` of ``model`` under ``protocol`` (evaluated unless already there)."""
    if not (dst / "results.json").exists():
        _log(f"[eval {what}] ...")
        evaluate(model, dst, protocol, command=f"sgalign.jobs.tune.run_tune ({method}, {what})")
    return json.loads((dst / "results.json").read_text())


def _train_cell(run: Path, cname: str, grid: TuneGrid, b: JobBudget, seed: int, beta: float | None,
                opts: dict[str, Any], every: int, base: Path, pairs: Path) -> None:
    """One training run of the grid (``b``: the cell's lr and the grid's last step), checkpointed every ``every``
    steps; skipped once finished, restarted clean when partial."""
    if (run / "final" / "model_index.json").exists() and (run / "summary.json").exists():
        return
    from ..training.trainer import train  # heavy (diffusers, accelerate): keeps tune light

    if run.exists():
        shutil.rmtree(run)  # no resume across grid cells: a partial run starts clean
    options = {**opts, **({"beta": beta} if beta is not None else {})}
    extra: dict[str, Any] = apply_overrides({}, grid.train_sets)
    extra["checkpointing"] = {"every": every, "keep": None}
    if options:
        extra["method"] = {"options": {trainer_method(grid.method): options}}
    _log(f"[train {cname}] {b.train_steps} steps ...")
    train(train_config(grid.method, run, base, pairs, b, seed, grid.task, extra=extra))


def _cell_figures(res: dict[str, Any], base_res: dict[str, Any], task: str, b: JobBudget,
                  seed: int) -> dict[str, Any]:
    """A cell's validation figures at one step: SG-IoU family, FID and paired Δ SG-IoU (compositional), or the
    win-rates over the base (t2i)."""
    if task != "compositional":
        return _figures_t2i(res, base_res, b.n_resamples, seed)
    fig = _figures(res)
    fig["delta_sg_iou"] = paired_delta(res, base_res, fig["key"], len(b.eval_seeds), n_resamples=b.n_resamples,
                                       seed=seed)
    return fig


def _choose_and_write(out: Path, record: dict[str, Any], cells: list[dict[str, Any]], grid: TuneGrid,
                      write_config: bool, config_path: str | Path | None) -> dict[str, Any]:
    """The choice over ``cells`` (the task's rule), each cell's eligibility, ``grid.json`` / ``grid.md``, and the
    tuned config file when asked: the end of ``run_tune`` and ``run_tune_draws`` alike."""
    t2i = grid.task == "t2i"
    pick = choose_t2i(cells) if t2i else choose(cells, record["base"]["fid"], grid.fid_guard)
    for c in cells:
        if t2i:
            c["eligible"] = T2I_HELDOUT not in c["scorers"] or c["scorers"][T2I_HELDOUT]["win_rate"]["high"] >= 0.5
        else:
            c["eligible"] = pick["limit"] is None or (c["fid"] is not None and c["fid"] <= pick["limit"])
    record = {**record, "fid_limit": pick["limit"], "chosen": pick["cell"], "why": pick["why"], "cells": cells}
    (out / "grid.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "grid.md").write_text(grid_markdown_t2i(record) if t2i else grid_markdown(record))
    draws = f" over pair draws {record['seeds']}" if "seeds" in record else ""
    _log(f"choice{draws}: {pick['cell']['cell'] + ' step ' + str(pick['cell']['step']) if pick['cell'] else None} "
         f"({pick['why']}) -> {out / 'grid.md'}")
    if write_config and pick["cell"] is not None:
        base_config = TASK_CONFIGS[grid.task][0]
        tuned = write_tuned_config(out / "tuned.yaml" if config_path is None else config_path,
                                   record["trainer_method"], pick["cell"], out / "grid.json", base_config)
        _log(f"wrote the choice to {tuned} (it includes {base_config}; train with --config {tuned})")
    return record


def run_tune_draws(out_dir: str | Path, grid: TuneGrid, seeds: list[int], budget: str | JobBudget = "demo",
                   base_model: str | Path | None = None, write_config: bool = False,
                   config_path: str | Path | None = None, **budget_overrides: Any) -> dict[str, Any]:
    """The grid once per pair draw, pooled per cell, and the choice made on the pooled figures.

    A seed draws the train graphs of the pairs and seeds the trainer. At the demo budget that draw moves validation
    SG-IoU by about 0.035 (docs/RESULTS.md, round 3), more than the settings a grid compares, so a one-draw grid
    mostly ranks its draw's luck. Each seed runs ``run_tune`` into ``OUT/seed-<s>/`` (resumable, as ever); the
    pooled cell averages each validation graph over the draws (the images of one graph and all its noise seeds stay
    together when resampling), FID is the mean of the draws' FIDs, and ``choose`` applies the usual rule to that.
    Writes ``OUT/grid.json`` and ``OUT/grid.md``; compositional task only."""
    if grid.task != "compositional":
        raise ValueError("tune over pair draws: compositional task only (t2i win-rates are not pooled)")
    seeds = list(dict.fromkeys(seeds))
    if len(seeds) < 2:
        raise ValueError(f"tune over pair draws: seeds {seeds}: give at least 2 distinct seeds (one seed: run_tune)")
    out = Path(out_dir)
    records = {s: run_tune(out / f"seed-{s}", grid, budget, s, base_model, **budget_overrides) for s in seeds}
    first = records[seeds[0]]
    b, key = first["budget"], first["base"]["key"]
    k = len(b["eval_seeds"])

    def load(s: int, rel: str) -> dict[str, Any]:
        return json.loads((out / f"seed-{s}" / rel).read_text())

    base = {m: per_image(load(seeds[0], "eval/base/results.json"), "model", m, key) for m, _ in METRICS}
    for s in seeds[1:]:
        other = load(s, "eval/base/results.json")
        check_same_noise({f"seed-{seeds[0]}/eval/base": load(seeds[0], "eval/base/results.json"),
                          f"seed-{s}/eval/base": other})
        if any(not np.array_equal(per_image(other, "model", m, key), base[m], equal_nan=True) for m in base):
            raise ValueError(f"{out / f'seed-{s}'}: its base scores differ from seed {seeds[0]}'s; the draws did not "
                             "evaluate the same graphs and seeds (one budget for all)")
    cells = []
    for c0 in first["cells"]:
        draws = [next(c for c in records[s]["cells"] if (c["cell"], c["step"]) == (c0["cell"], c0["step"]))
                 for s in seeds]
        deltas: dict[str, list[np.ndarray]] = {m: [] for m, _ in METRICS}
        for s, c in zip(seeds, draws):
            res = load(s, c["results"])
            for m in deltas:
                deltas[m].append(graph_deltas(per_image(res, "model", m, key), base[m], k))
        fids = [c["fid"] for c in draws]
        cis = {m: pooled_ci(deltas[m], b["n_resamples"], seeds[0], unit="graph (all pair draws and noise seeds)")
               for m in deltas}
        cells.append({**{f: c0[f] for f in ("cell", "beta", "lr", "options", "step")}, "key": key,
                      **{m: float(np.mean([c[m] for c in draws])) for m in deltas},
                      "fid": None if None in fids else float(np.mean(fids)),
                      **{f"delta_{m}": {x: cis[m][x] for x in ("estimate", "low", "high")} for m in deltas},
                      "draws": [{"seed": s, "delta_sg_iou": c["delta_sg_iou"], "fid": c["fid"],
                                 "train_summary": c["train_summary"], "results": f"seed-{s}/{c['results']}"}
                                for s, c in zip(seeds, draws)]})
    record = {**{f: first[f] for f in ("method", "task", "trainer_method", "grid", "steps", "budget", "base",
                                        "base_snapshot")}, "seeds": seeds}
    return _choose_and_write(out, record, cells, grid, write_config, config_path)

def grid_markdown(record: dict[str, Any]) -> str:
    """``grid.md``: one line per cell (validation figures, eligibility), the base, the choice and its reason."""
    b, base = record["budget"], record["base"]
    pooled = "seeds" in record  # run_tune_draws: figures pooled over pair draws
    who = f"pair draws {record['seeds']}, pooled" if pooled else f"seed {record['seed']}"
    lines = [f"# Validation grid: {record['method']} ({b['name']} budget, {who})", "",
             f"{b['eval_graphs']} world {b['eval_split']} graphs x {len(b['eval_seeds'])} seeds, {b['eval_steps']} "
             f"DDIM steps; SG-IoU family `{base['key']}`. Choice: highest SG-IoU with FID <= base FID x "
             f"{record['grid']['fid_guard']}."
             + (" Each cell: the mean over the draws (per graph; FID: the mean of the draws' FIDs), its interval "
                "resampling graphs with all their draws and seeds; per draw: each draw's own Δ SG-IoU and FID."
                if pooled else ""), "",
             "| cell | step | SG-IoU | Δ SG-IoU [95 % CI, by graph] | Entity-IoU | Relation-IoU | FID | eligible | "
             "chosen |" + (" per draw Δ SG-IoU (FID) |" if pooled else ""), "|" + "---|" * (10 if pooled else 9)]

    def f(x: float | None, d: int = 4) -> str:
        return "n/a" if x is None else f"{x:.{d}f}"

    lines.append(f"| base | 0 | {f(base['sg_iou'])} | - | {f(base['entity_iou'])} | {f(base['relation_iou'])} | "
                 f"{f(base['fid'], 2)} | - | - |" + (" - |" if pooled else ""))
    ch = record["chosen"]
    for c in record["cells"]:
        mark = "**yes**" if ch and (c["cell"], c["step"]) == (ch["cell"], ch["step"]) else ""
        d = c.get("delta_sg_iou")
        delta = "n/a" if d is None else f"{d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
        per_draw = (" " + ", ".join(f"{d['delta_sg_iou']['estimate']:+.3f} ({f(d['fid'], 2)})" for d in c["draws"])
                    + " |") if pooled else ""
        lines.append(f"| {c['cell']} | {c['step']} | {f(c['sg_iou'])} | {delta} | {f(c['entity_iou'])} | "
                     f"{f(c['relation_iou'])} | {f(c['fid'], 2)} | {'yes' if c['eligible'] else 'no'} | {mark} |"
                     + per_draw)
    lines += ["", f"Choice: {record['why']}.", ""]
    return "\n".join(lines)


def grid_markdown_t2i(record: dict[str, Any]) -> str:
    """``grid.md`` of a t2i grid: per cell and step, the win-rate over the base under each scorer."""
    b = record["budget"]
    names = [T2I_REWARD, T2I_HELDOUT]
    lines = [f"# Validation grid: {record['method']} (t2i, {b['name']} budget, seed {record['seed']})", "",
             f"{b['eval_graphs']} world {b['eval_split']} prompts x {len(b['eval_seeds'])} seeds, {b['eval_steps']} "
             "DDIM steps; win-rate over the base on the same prompts and seeds (ties half), 95 % interval "
             f"resampling prompts. Choice: {record['why']}.", "",
             "| cell | step | " + " | ".join(f"win-rate {n}" for n in names) + " | chosen |",
             "|" + "---|" * (len(names) + 3)]
    ch = record["chosen"]
    for c in record["cells"]:
        mark = "**yes**" if ch and (c["cell"], c["step"]) == (ch["cell"], ch["step"]) else ""
        wr = [c["scorers"][n]["win_rate"] if n in c["scorers"] else None for n in names]
        cols = ["n/a" if w is None else f"{w['estimate']:.3f} [{w['low']:.3f}, {w['high']:.3f}]" for w in wr]
        lines.append(f"| {c['cell']} | {c['step']} | " + " | ".join(cols) + f" | {mark} |")
    return "\n".join(lines + [""])


TUNED_HEADER = "# sgalign tuned config"  # first line of every file write_tuned_config writes (and may replace)


def write_tuned_config(path: str | Path, method: str, cell: dict[str, Any], grid_json: Path,
                       base_config: str | Path) -> Path:
    """Write the choice to a new YAML ``path`` that includes ``base_config`` (the task's world YAML) and sets, for
    ``method``, the chosen β / options (``method.options``) and lr / steps (``method.settings``), and trains it by
    default (``method.name``). ``--config path`` then trains the choice; a tracked config is never edited. Only a
    file this function wrote may be replaced."""
    path = Path(path)
    if path.exists() and not path.read_text().startswith(TUNED_HEADER):  # e.g. a tracked config (or base_config)
        raise ValueError(f"{path} exists and was not written by tuning; choose a new file for the tuned config")
    options = {**cell["options"], **({"beta": cell["beta"]} if cell["beta"] is not None else {})}
    data = {"include": [os.path.relpath(Path(base_config).resolve(), path.resolve().parent)],
            "method": {"name": method, "options": {method: options},
                       "settings": {method: {"optimizer": {"lr": cell["lr"]}, "trainer": {"max_steps": cell["step"]}}}}}
    task = (yaml.safe_load(Path(base_config).read_text()) or {}).get("task", "<task>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{TUNED_HEADER}: {cell['cell']} step {cell['step']}, chosen on validation ({grid_json}).\n"
                    f"# Train it: python scripts/train.py --task {task} --config {path}\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path

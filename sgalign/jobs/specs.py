"""What the world job runs: budgets, method ids, the configs of each task, and the typed configs of its stages.

``train_config`` / ``pairs_config`` / ``eval_protocol`` build the ``TrainConfig`` / ``BuildPairsConfig`` /
``EvalProtocol`` of a stage from the task's YAML plus the budget (typed values, no argv); ``train_command`` /
``pairs_command`` are the equivalent command lines, written into the run folders for provenance only.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, get_args

import yaml

from data_builders.config import BuildPairsConfig

from ..config import load_config
from ..world import parse_holdout

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "configs" / "world" / "compositional.yaml"
PAIRS_CONFIG = ROOT / "configs" / "build_pairs" / "world.yaml"
EVAL_CONFIG = ROOT / "configs" / "evaluate" / "world_compositional.yaml"
T2I_TRAIN_CONFIG = ROOT / "configs" / "world" / "t2i.yaml"
T2I_EVAL_CONFIG = ROOT / "configs" / "evaluate" / "world_t2i.yaml"
TASKS = ("compositional", "t2i")
# task -> (training config, evaluation protocol)
TASK_CONFIGS = {"compositional": (TRAIN_CONFIG, EVAL_CONFIG), "t2i": (T2I_TRAIN_CONFIG, T2I_EVAL_CONFIG)}
T2I_RELABEL = {"name": "world-clip"}  # pickapic.relabel: ps_0 / ps_1 = world-CLIP cosine (SmPO's score columns)
T2I_GUIDANCE = 3.0  # CFG of the world Pick-a-Pic generation (as configs/evaluate/world_t2i.yaml)

# method id -> (trainer method name, its method.options). Inversion-DPO in both forms (METHODS.md).
METHOD_SPECS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "diffusion-dpo": ("diffusion-dpo", {}),
    "inversion-dpo": ("inversion-dpo", {"inversion-dpo": {"faithful": False}}),  # trajectory target
    "inversion-dpo-faithful": ("inversion-dpo", {"inversion-dpo": {"faithful": True}}),  # official
    "inpo": ("inpo", {}),
    "smpo": ("smpo", {}),
    "sft": ("sft", {}),
}
# "<method>@<variant>": the method trained on a derived pairs dataset (data_builders.variants): gold = the true
# render over the base's worst candidate (a ceiling), shuffled = rewards permuted within each graph (a floor)
PairsVariant = Literal["gold", "shuffled"]
PAIRS_VARIANTS: tuple[str, ...] = get_args(PairsVariant)


def split_method_id(method_id: str) -> tuple[str, str | None]:
    """``"diffusion-dpo@gold"`` -> ("diffusion-dpo", "gold"); ``"smpo"`` -> ("smpo", None); else a ValueError."""
    name, sep, variant = method_id.partition("@")
    if name not in METHOD_SPECS or (sep and variant not in PAIRS_VARIANTS):
        raise ValueError(f"unknown method {method_id!r}; available: {', '.join(METHOD_SPECS)}, each optionally "
                         f"with @{' / @'.join(PAIRS_VARIANTS)}")
    return name, (variant or None)


def trainer_method(method_id: str) -> str:
    """The trainer's method name of a job method id (variants included)."""
    return METHOD_SPECS[split_method_id(method_id)[0]][0]


ALL_METHODS = ("diffusion-dpo", "inversion-dpo-faithful", "inversion-dpo", "inpo", "smpo", "sft")
METRICS = (("sg_iou", "SG-IoU"), ("entity_iou", "Entity-IoU"), ("relation_iou", "Relation-IoU"))


EvalSplit = Literal["test", "validation"]


@dataclass
class JobBudget:
    """Every knob that sets the cost of the job; the same for every method."""

    name: str
    annotations: int  # world train-split graphs for build_pairs (t2i: rows of the world Pick-a-Pic file)
    k: int  # candidates per graph (t2i: not used; 2 images per caption)
    gen_steps: int  # DDIM steps of the candidate generation
    train_steps: int | None  # optimizer steps per method; None: each method's from the task config (tuned)
    batch_size: int  # pairs per step
    lr: float | None  # per pair (scale_lr: x batch); None: each method's from the task config (tuned)
    warmup_steps: int
    eval_graphs: int  # world test-split graphs
    eval_seeds: list[int]
    eval_steps: int  # DDIM steps of the evaluation sampling
    n_resamples: int = 1000  # bootstrap resamples (IoU intervals, paired differences)
    fid_resamples: int = 200
    grid_graphs: int = 4
    torch_threads: int = 1  # a busy shared CPU: one thread is faster and steadier
    # the world split evaluated: "validation" for tuning (sgalign.jobs.tune), "test" for the reported tables
    eval_split: EvalSplit = "test"
    # held-out colour:shape pairs (issue 20 item 4): pairs are built from train graphs that never contain them, and a
    # test evaluation uses only graphs that contain one (sample_split's novel_only): the generalisation table
    holdout: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.lr, str):  # YAML 1.1 reads --budget-set lr=1e-5 as a string
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise ValueError(f"budget lr {self.lr!r}: expected a number, e.g. 1e-5") from None
        if self.eval_split not in get_args(EvalSplit):
            raise ValueError(f"budget eval_split {self.eval_split!r}: choose one of {', '.join(get_args(EvalSplit))}")
        if isinstance(self.holdout, str):  # "red:circle" alone would be read letter by letter
            raise ValueError(f"budget holdout {self.holdout!r}: expected a list of 'colour:shape' strings")
        parse_holdout(self.holdout)


# World-scale CPU budgets (not official values). lr 1e-5 per pair: the world config's 1e-6 (the SD1.5 value) moves a
# ~2M-parameter UNet by nothing measurable in tens of steps.
BUDGETS: dict[str, JobBudget] = {
    "micro": JobBudget("micro", annotations=2, k=2, gen_steps=2, train_steps=2, batch_size=1, lr=1e-5,
                       warmup_steps=0, eval_graphs=2, eval_seeds=[0], eval_steps=2, n_resamples=50,
                       fid_resamples=10, grid_graphs=1),
    # demo: each method's lr and steps as chosen on validation graphs (the task config's optimizer / trainer values
    # and method.settings; docs/RESULTS.md, "Validation grids")
    "demo": JobBudget("demo", annotations=96, k=4, gen_steps=15, train_steps=None, batch_size=4, lr=None,
                      warmup_steps=10, eval_graphs=64, eval_seeds=[0, 1], eval_steps=20),
    # table: ~1 pass over the 1536 same-graph pairs of 256 graphs x 4; lr 1e-5 per pair (5e-5 blew Diffusion-DPO up
    # in a demo-budget probe: FID 55 -> 106); 128 test graphs x 3 seeds so paired intervals resolve ~0.01 effects
    "table": JobBudget("table", annotations=256, k=4, gen_steps=20, train_steps=400, batch_size=4, lr=1e-5,
                       warmup_steps=10, eval_graphs=128, eval_seeds=[0, 1, 2], eval_steps=20),
}
DEMO_METHODS = ("diffusion-dpo", "inpo")  # InPO: the best validation cell of the demo-budget grids (RESULTS)


def resolve_budget(budget: str | JobBudget, **overrides: Any) -> JobBudget:
    if isinstance(budget, JobBudget):
        b = budget
    elif budget in BUDGETS:
        b = BUDGETS[budget]
    else:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)} or pass a JobBudget")
    return replace(b, **overrides) if overrides else b


def parse_budget_sets(items: Iterable[str]) -> dict[str, Any]:
    """``--budget-set KEY=VALUE`` items as ``resolve_budget`` overrides (each value read as YAML); a KEY that is not
    a ``JobBudget`` field (``name`` included: the budget is chosen by name) is refused with a ``ValueError``."""
    keys = [k for k in JobBudget.__dataclass_fields__ if k != "name"]
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"--budget-set {item!r}: expected KEY=VALUE with KEY one of {', '.join(keys)}")
        overrides[key] = yaml.safe_load(value)
    return overrides

# ---- typed stage configs ------------------------------------------------------------------------------------------
def _cli_value(v: Any) -> str:
    """A value as the ``--set key=value`` text that parses back to it (YAML)."""
    return v if isinstance(v, str) else json.dumps(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[str]:
    """{"a": {"b": 1}} -> ["a.b=1"] (the ``--set`` form of a nested update)."""
    out: list[str] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={_cli_value(v)}")
    return out


def method_training(method_id: str, b: JobBudget, task: str = "compositional") -> tuple[float, int]:
    """(lr per pair, optimizer steps) a job method trains with: the budget's, else the task config's for that method
    (its ``method.settings``, chosen on validation, over the file's optimizer / trainer values)."""
    if b.lr is not None and b.train_steps is not None:
        return b.lr, b.train_steps
    from ..training.config import TrainConfig  # heavy (diffusers via sgalign.training): keeps the scripts' --help light

    cfg = load_config(TrainConfig, TASK_CONFIGS[task][0], [f"method.name={trainer_method(method_id)}"])
    return (b.lr if b.lr is not None else cfg.optimizer.lr,
            b.train_steps if b.train_steps is not None else cfg.trainer.max_steps)


def train_updates(method_id: str, run_dir: Path, base: Path, pairs: Path, b: JobBudget, seed: int,
                  task: str = "compositional") -> dict[str, Any]:
    """The world job's values over the task's training YAML: the same budget and seed for every method (lr and
    steps: the budget's, else each method's own from the YAML, written out so the command line shows them)."""
    options = METHOD_SPECS[split_method_id(method_id)[0]][1]
    lr, steps = method_training(method_id, b, task)
    return {"model": {"path": str(base)},
            "data": {"path": str(pairs), "batch_size": b.batch_size},
            "trainer": {"output_dir": str(run_dir), "max_steps": steps, "seed": seed},
            "optimizer": {"lr": lr, "warmup_steps": b.warmup_steps},
            "checkpointing": {"every": max(1, steps // 2), "keep": 1},
            "logging": {"tqdm": False},
            **({"method": {"options": options}} if options else {})}


def train_config(method_id: str, run_dir: Path, base: Path, pairs: Path, b: JobBudget, seed: int,
                 task: str = "compositional", resume: str | None = None, overrides: tuple[str, ...] = (),
                 extra: dict[str, Any] | None = None):
    """The ``TrainConfig`` of one method's training stage (``overrides``: extra ``key=value`` strings, for tests;
    ``extra``: nested typed values merged last, e.g. a tuning cell's method options and checkpoint interval)."""
    from ..training.config import TrainConfig  # heavy (diffusers via sgalign.training): keeps the scripts' --help light

    updates = train_updates(method_id, run_dir, base, pairs, b, seed, task)
    top: dict[str, Any] = {"task": task, "method": {"name": trainer_method(method_id)}}
    if resume is not None:
        top["checkpointing"] = {"resume": resume}
    return load_config(TrainConfig, TASK_CONFIGS[task][0], overrides,
                       updates=[updates, top, *([extra] if extra else [])])


def train_overrides(method_id: str, run_dir: Path, base: Path, pairs: Path, b: JobBudget, seed: int,
                    task: str = "compositional") -> list[str]:
    """The ``scripts/train.py`` arguments equivalent to ``train_config`` (provenance: ``job_command.txt``)."""
    name = trainer_method(method_id)
    sets = _flatten(train_updates(method_id, run_dir, base, pairs, b, seed, task))
    return ["--task", task, "--method", name, "--config", str(TASK_CONFIGS[task][0]),
            *[a for s in sets for a in ("--set", s)]]


def pairs_updates(base: Path | None, b: JobBudget, seed: int, task: str = "compositional") -> dict[str, Any]:
    """The world job's values over ``configs/build_pairs/world.yaml`` (compositional) or the defaults (t2i)."""
    if task == "t2i":
        return {"pickapic": {"relabel": dict(T2I_RELABEL)}, "torch_threads": b.torch_threads, "source": "pickapic"}
    return {"generation": {"k": b.k, "seed": seed, "num_inference_steps": b.gen_steps},
            "world": {"seed": seed, "n": b.annotations, "holdout": list(b.holdout)},
            "torch_threads": b.torch_threads, "source": "shapes",
            "model": {"path": str(base)}}


def pairs_config(base: Path | None, b: JobBudget, seed: int, task: str = "compositional"):
    """The ``BuildPairsConfig`` of the pairs stage."""
    path = PAIRS_CONFIG if task == "compositional" else None
    return load_config(BuildPairsConfig, path, updates=[pairs_updates(base, b, seed, task)])


def pairs_command(out: Path, base: Path | None, b: JobBudget, seed: int, task: str = "compositional",
                  input: Path | None = None) -> str:
    """The ``scripts/build_pairs.py`` command equivalent to ``pairs_config`` (for error messages)."""
    if task == "t2i":
        argv = ["--source", "pickapic", "--input", str(input), "--out", str(out),
                "--set", "pickapic.relabel={name: world-clip}", "--set", f"torch_threads={b.torch_threads}"]
    else:
        argv = ["--source", "shapes", "--config", str(PAIRS_CONFIG), "--out", str(out), "--model", str(base),
                "--n", str(b.annotations), "--set", f"generation.k={b.k}", "--set", f"generation.seed={seed}",
                "--set", f"generation.num_inference_steps={b.gen_steps}", "--set", f"world.seed={seed}",
                "--set", f"torch_threads={b.torch_threads}"]
        if b.holdout:
            argv += ["--set", f"world.holdout={json.dumps(list(b.holdout))}"]
    return "python scripts/build_pairs.py " + shlex.join(argv + ["--no-progress"])


EVAL_GRAPHS_SEED = 0


def eval_protocol(b: JobBudget, seed: int, task: str = "compositional"):
    """The ``EvalProtocol`` of the evaluation stage: the task's world protocol at the budget's size."""
    from ..evaluation.protocol import EvalProtocol  # heavy (torch): keeps the scripts' --help light

    updates: dict[str, Any] = {
        # the evaluation graphs do not follow the training seed: runs of several training seeds are scored on the
        # same graphs, so their spread is the training's alone
        "inputs": {"n": b.eval_graphs, "seed": EVAL_GRAPHS_SEED, "split": b.eval_split, "holdout": list(b.holdout),
                   "novel_only": bool(b.holdout) and b.eval_split == "test"},
        "sampling": {"seeds": list(b.eval_seeds), "steps": b.eval_steps, "torch_threads": b.torch_threads},
        "stats": {"n_resamples": b.n_resamples, "seed": seed},
        "report": {"grid_graphs": min(b.grid_graphs, b.eval_graphs)}, "task": task}
    if task == "compositional":
        updates["compositional"] = {"fid_resamples": b.fid_resamples}
    return load_config(EvalProtocol, str(TASK_CONFIGS[task][1]), updates=[updates])

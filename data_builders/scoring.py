"""The configured reward of a candidate build, and the fixed list of score columns it fills.

Score columns: every member's main component (``dpg``, ``compbench_3in1``) plus 3-in-1's parts A, S, C, T (None
where a part does not apply to the graph's prompt type, e.g. S for a graph without a spatial relation). The
combined reward (Eq. 17) goes to the ``reward`` column, not into ``scores``.
"""
from __future__ import annotations

from typing import Any, Sequence

from sgalign.errors import UserError, shown
from sgalign.rewards import (COMBINED_KEY, CombinedReward, CompBench3in1Reward, CompBenchConfig, DPGConfig, DPGReward,
                             world_reward)
from sgalign.rewards.backends import build_backend
from sgalign.world import rules
from sgalign.world.oracle import Phrase

from .config import BackendSpec, RewardsSection

PARTS = {"compbench_3in1": ("A", "S", "C", "T")}


class RewardConfigError(UserError, ValueError):
    """The rewards section does not describe a buildable reward."""


def build_reward(cfg: RewardsSection) -> CombinedReward:
    dpg_cfg, cb_cfg = DPGConfig(**cfg.dpg), CompBenchConfig(**cfg.compbench_3in1)
    if cfg.preset == "world":
        if cfg.backends:
            raise RewardConfigError("rewards.backends is only read with rewards.preset: custom (the world preset "
                                    "uses the world backends; rewards.world_similarity picks 3-in-1's C)")
        if cfg.world_clip_path is not None and cfg.world_similarity != "world-clip":
            raise RewardConfigError("rewards.world_clip_path is only read with rewards.world_similarity: world-clip")
        # C is 3-in-1's: without that member no C backend is built (no world-CLIP load, nothing in provenance)
        sim = cfg.world_similarity if "compbench_3in1" in cfg.members else "oracle"
        full = world_reward(dpg_config=dpg_cfg, compbench_config=cb_cfg, similarity=sim,
                            world_clip_path=cfg.world_clip_path if sim == "world-clip" else None)
        members = [r for r in full.rewards if r.name in cfg.members]
        return CombinedReward(members)
    if cfg.world_similarity != "world-clip" or cfg.world_clip_path is not None:
        raise RewardConfigError("rewards.world_similarity / world_clip_path are only read with rewards.preset: world "
                                "(preset custom: set rewards.backends.similarity, e.g. {name: world-clip, path: DIR})")
    need = {"dpg": ("vqa",), "compbench_3in1": ("vqa", "detector", "similarity", "parser")}
    roles = sorted({r for m in cfg.members for r in need[m]})
    missing = [r for r in roles if r not in cfg.backends]
    if missing:
        raise RewardConfigError(f"rewards.backends: no backend for role(s) {missing} needed by members {cfg.members} "
                                "(e.g. rewards.backends.vqa: {name: blip-vqa, path: <local folder>})")
    b = {r: _backend(r, cfg.backends[r], cfg.policy) for r in roles}
    members: list[Any] = []
    if "dpg" in cfg.members:
        members.append(DPGReward(b["vqa"], dpg_cfg))
    if "compbench_3in1" in cfg.members:
        members.append(CompBench3in1Reward(b["vqa"], b["detector"], b["similarity"], b["parser"], config=cb_cfg))
    return CombinedReward(members)


def _backend(role: str, spec: BackendSpec, policy: str):
    return build_backend(role, spec.name, path=spec.path, policy=policy, **spec.options)


def score_columns(reward: CombinedReward) -> list[str]:
    cols = []
    for r in reward.rewards:
        cols.append(r.name)
        cols += [f"{r.name}/{p}" for p in PARTS.get(r.name, ())]
    return cols


def score_batch(reward: CombinedReward, images: Sequence[Any], graphs: Sequence[Any]):
    """Per image: ({column: value or None}, combined reward), and the reward's provenance."""
    out = reward(images, graphs)
    cols = score_columns(reward)
    rows = []
    for s, p in zip(out.scores, out.parts):
        vals = {c: (float(s[c]) if c in s else _opt_float(p.get(c))) for c in cols}
        rows.append((vals, float(s[COMBINED_KEY])))
    return rows, out.provenance


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


class UnscorableAnnotations(UserError):
    """The configured reward cannot score the annotations' vocabulary (raised before any image is generated)."""


REAL_BACKEND_KEYS = ("rewards.preset=custom", "rewards.backends.vqa.path", "rewards.backends.detector.path",
                     "rewards.backends.similarity.path", "rewards.backends.parser.path")  # BLIP-VQA, OWL-ViT, CLIP, spaCy


def check_vocabulary(records: Sequence[Any], cfg: RewardsSection) -> None:
    """Refuse annotations the reward cannot score. The world preset reads images with the shapes-world oracle,
    which knows only the world's colours, sizes, shapes and six predicates: any other word (real LAION-SG's
    "adjacent to", "snow") would fail every annotation after all its images were generated."""
    if cfg.preset != "world":
        return
    bad = []
    for rec in records:
        words = [w for it in rec.items for w in Phrase.of_item(it.label, it.attributes).unknown]
        words += [r.relation for r in rec.relations if r.relation not in rules.PREDICATES]
        if words:
            bad.append((rec.img_id, words))
    if bad:
        img_id, words = bad[0]
        raise UnscorableAnnotations(
            f"{len(bad)}/{len(records)} annotations have words the world reward cannot score (img_id "
            f"{shown(img_id, 24)}: {', '.join(shown(w, 24) for w in list(dict.fromkeys(words))[:2])}); set "
            f"{REAL_BACKEND_KEYS[0]} and {', '.join(REAL_BACKEND_KEYS[1:3])}, .similarity.path, .parser.path "
            "(configs/build_pairs/laion_sg_sdxl.yaml)")

"""Compositional rewards: DPG-Bench and T2I-CompBench 3-in-1 as exact, model-free logic behind pluggable backends,
their Eq. 17 combination, and provenance on every score.

    reward = CombinedReward([DPGReward(vqa), CompBench3in1Reward(vqa, detector, similarity, parser)])
    out = reward(images, scene_graphs)   # out.scores[i] = {"dpg": .., "compbench_3in1": .., "reward": ..}

On the shapes world: ``world_reward()`` is the same combination on the world backends (``backends/world.py``):
world-oracle VQA and detector, and world-CLIP's cosine as 3-in-1's C (``similarity="oracle"``: the oracle score).
"""
from .combine import COMBINED_KEY, CombinedReward, combine
from .compbench import CompBench3in1Reward, CompBenchConfig, PromptTypeLists
from .dpg_bench import DPGConfig, DPGReward, QuestionSet, questions_from_scene_graph, read_dsg_csv
from .interface import Reward
from .provenance import BackendInfo, Provenance, RewardOutput

__all__ = [
    "COMBINED_KEY", "CombinedReward", "combine", "CompBench3in1Reward", "CompBenchConfig", "PromptTypeLists",
    "DPGConfig", "DPGReward", "QuestionSet", "questions_from_scene_graph", "read_dsg_csv", "Reward",
    "BackendInfo", "Provenance", "RewardOutput", "world_reward",
]


def __getattr__(name: str):  # the world backends import the shapes world (scipy): only when asked for
    if name == "world_reward":
        from .backends.world import world_reward  # heavy (sgalign.world: scipy): only when asked for
        return world_reward
    raise AttributeError(name)

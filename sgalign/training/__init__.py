"""The trainer core (accelerate loop, data, checkpoints); methods plug in through ``sgalign.methods``.

``train(load_config(TrainConfig, file, overrides))`` runs one method on one task; see ``trainer`` for the loop,
``data`` for the candidate-dataset schema and the Pick-a-Pic reader, ``modeling`` for the conditioning and the
policy/reference networks, ``checkpoint`` for the on-disk layout and exact resume.
"""
from .config import TrainConfig
from .data import CandidatePairs, PickapicPairs
from .pair_sampler import DynamicPairSampler, PairIndex, eligible_pairs
from .trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = ["CandidatePairs", "DynamicPairSampler", "PairIndex", "PickapicPairs", "TrainConfig", "TrainResult",
           "Trainer", "TrainingDiverged", "eligible_pairs", "train"]

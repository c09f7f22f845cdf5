"""The trainer core (accelerate loop, data, checkpoints); methods plug in through ``sgalign.methods``."""
from .pair_sampler import DynamicPairSampler, PairIndex, eligible_pairs

__all__ = ["DynamicPairSampler", "PairIndex", "eligible_pairs"]

import itertools

import pytest

from sgalign.training.pair_sampler import DynamicPairSampler, eligible_pairs


def test_eligible_pairs_by_hand():
    assert eligible_pairs([0.2, 0.5, 0.5, 0.1], margin=0.05) == [(1, 0), (2, 0), (0, 3), (1, 3), (2, 3)]
    assert eligible_pairs([0.2, 0.5, 0.5, 0.1], margin=0.35) == [(1, 3), (2, 3)]
    assert eligible_pairs([0.3, 0.3]) == []  # ties never form a pair


def test_one_per_annotation_is_dynamic_and_winner_higher():
    rewards = [[0.1, 0.9, 0.5, 0.3], [0.4, 0.4, 0.4, 0.4], [0.0, 1.0, 0.2, 0.6]]
    s = DynamicPairSampler(rewards, margin=0.05, seed=1)
    assert s.skipped_annotations == [1]
    items = list(itertools.islice(iter(s), 40))
    assert all(it.reward_win - it.reward_lose > 0.05 for it in items)
    assert {it.annotation for it in items} == {0, 2}
    assert len({(it.annotation, it.win, it.lose) for it in items}) > 2  # pairs are redrawn across epochs


def test_resume_is_exact_without_replay():
    rewards = [[i * 0.1, 1 - i * 0.1, 0.5, (i % 3) * 0.3] for i in range(10)]
    full = list(itertools.islice(iter(DynamicPairSampler(rewards, seed=3)), 35))
    a = DynamicPairSampler(rewards, seed=3)
    first = list(itertools.islice(iter(a), 13))
    state = a.state_dict()
    b = DynamicPairSampler(rewards, seed=3)
    b.load_state_dict(state)
    rest = list(itertools.islice(iter(b), 22))
    assert first + rest == full
    with pytest.raises(ValueError, match="seed"):
        DynamicPairSampler(rewards, seed=4).load_state_dict(state)


def test_ranks_partition_the_epoch():
    rewards = [[0.0, 1.0]] * 7
    s0 = DynamicPairSampler(rewards, mode="all-pairs", num_replicas=2, rank=0)
    s1 = DynamicPairSampler(rewards, mode="all-pairs", num_replicas=2, rank=1)
    assert len(s0) == len(s1) == 4  # 7 items padded to 8
    e0 = list(itertools.islice(iter(s0), 4))
    e1 = list(itertools.islice(iter(s1), 4))
    assert {it.annotation for it in e0 + e1} == set(range(7))


def test_no_pair_anywhere_is_a_clear_error():
    with pytest.raises(ValueError, match="margin"):
        next(iter(DynamicPairSampler([[0.5, 0.5]], margin=0.1)))

"""World-model data: seeded render streams and corrupted captions that are false for their image."""
import numpy as np
import pytest
import torch

from sgalign.world.models import CORRUPTIONS, caption, corrupt, render_stream, scene_stream_batch
from sgalign.world.sampler import sample_split, split_of


def _true_for(scene, claim) -> bool:
    """Does ``claim`` (a WorldScene whose boxes are ignored) describe ``scene``'s render? Objects matched by phrase."""
    phrases = [o.phrase for o in scene.objects]
    if any(o.phrase not in phrases for o in claim.objects):
        return False
    holding = {(phrases[s], p, phrases[o]) for s, p, o in scene.holding_relations()}
    return all((claim.objects[s].phrase, p, claim.objects[o].phrase) in holding for s, p, o in claim.relations)


def test_stream_is_seeded_and_stays_in_its_split():
    a = scene_stream_batch("train", seed=3, step=5, batch=16)
    assert a == scene_stream_batch("train", seed=3, step=5, batch=16)
    assert a != scene_stream_batch("train", seed=3, step=6, batch=16)
    assert all(split_of(s.key()) == "train" for s in a)
    scenes, images = next(render_stream("validation", seed=0, batch=4))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert all(split_of(s.key()) == "validation" for s in scenes)


def test_holdout_pairs_never_in_train_stream():
    scenes = scene_stream_batch("train", seed=0, step=0, batch=64, holdout=["red:circle"])
    assert not any(o.colour == "red" and o.shape == "circle" for s in scenes for o in s.objects)


def test_caption_is_the_serialised_graph():
    scene = sample_split("test", 1, seed=0)[0]
    assert caption(scene) == scene.graph().serialize()
    s, p, o = scene.relations[0]
    assert caption(scene).startswith(f"{scene.objects[s].phrase} {p} {scene.objects[o].phrase} ")


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corruptions_are_false_and_minimal(kind):
    rng = np.random.default_rng(0)
    for scene in sample_split("test", 60, seed=1):
        assert _true_for(scene, scene)  # the checker accepts the truth
        bad = corrupt(scene, kind, rng)
        assert not _true_for(scene, bad), (kind, caption(scene), caption(bad))
        assert caption(bad) != caption(scene)
        changed_objs = sum(a != b for a, b in zip(scene.objects, bad.objects))
        changed_rels = sum(a != b for a, b in zip(scene.relations, bad.relations))
        if kind == "colour":
            assert (changed_objs, changed_rels) == (1, 0)
        else:
            assert (changed_objs, changed_rels) == (0, 1)
        if kind == "swap":
            (k,) = [i for i, (a, b) in enumerate(zip(scene.relations, bad.relations)) if a != b]
            s, p, o = scene.relations[k]
            assert bad.relations[k] == (o, p, s)


def test_unknown_corruption_is_named():
    with pytest.raises(ValueError, match="unknown corruption 'shape'"):
        corrupt(sample_split("test", 1)[0], "shape", np.random.default_rng(0))

"""build_pairs batched vs one candidate at a time (issue 19 item 4): the batched build (one pipeline call and one
reward call per annotations_per_call annotations; the reward parses all images in one oracle call and runs C's
CLIP once for the batch) gives the candidates, scores and rewards of the reference path that generates and scores
each candidate alone, up to float summation order."""
import io

import numpy as np
import pytest
from PIL import Image

from data_builders.laion_sg import CandidateBuilder
from data_builders.scoring import build_reward
from data_builders.shapes import plan_world
from sgalign.scene_graph import SceneGraph
from sgalign.world import sample_split, split_records
from sgalign.world.render import render
from build_pairs_helpers import small_config, tiny  # noqa: F401 (tiny: a fixture)

FLOAT = 1e-6  # C is a CLIP cosine: a batched forward may sum in another order


def _pixels(rows):
    return np.stack([np.asarray(Image.open(io.BytesIO(c))) for r in rows for c in r["candidates"]]).astype(int)


def _close(a, b):
    return a == b if a is None or b is None else abs(a - b) <= FLOAT


def test_batched_build_equals_one_at_a_time(tiny):
    cfg = small_config(tiny, world={"n": 3})  # one call of 3 annotations x 4 seeds
    recs = plan_world(cfg.world).records
    b = CandidateBuilder(cfg)
    batched, fails = b.rows(recs)
    assert not fails
    b.reward = build_reward(cfg.rewards)  # fresh parse cache: the reference parses every image itself
    alone, fails = b.rows(recs, batched=False)
    assert not fails and len(batched) == len(alone) == 3
    assert np.abs(_pixels(batched) - _pixels(alone)).max() <= 1  # float summation order only
    for rb, ra in zip(batched, alone):
        assert rb["seeds"] == ra["seeds"] and rb["annotation"] == ra["annotation"]
        assert rb["provenance"] == ra["provenance"]
        assert rb["reward"] == pytest.approx(ra["reward"], abs=FLOAT)
        for col, vals in rb["scores"].items():
            assert all(_close(x, y) for x, y in zip(vals, ra["scores"][col])), col


def test_world_reward_batch_equals_per_image():
    """The reward on a batch (shared graphs, as a build passes them) equals the reward image by image: the batched
    oracle parse and the one CLIP call change no answer."""
    from sgalign.rewards import world_reward

    scenes = sample_split("train", 8, seed=5)
    images = [render(s) for s in scenes]
    graphs = [SceneGraph.from_record(r) for r in split_records("train", scenes)]
    targets = [graphs[i // 2] for i in range(8)]  # two images per graph: the texts repeat, as K candidates' do
    reward = world_reward()
    calls = {"parse_batch": 0, "similarity": 0}
    dpg, cb = reward.rewards
    for obj, name in ((dpg.vqa._cache.oracle, "parse_batch"), (cb.similarity, "similarity")):
        def spy(*a, _f=getattr(obj, name), _n=name):
            calls[_n] += 1
            return _f(*a)
        setattr(obj, name, spy)
    whole = reward(images, targets)
    assert calls == {"parse_batch": 1, "similarity": 1}  # the batch is parsed and embedded in one call each
    for i, (im, g) in enumerate(zip(images, targets)):
        one = world_reward()([im], [g])
        assert whole.scores[i]["dpg"] == one.scores[0]["dpg"]
        assert whole.scores[i]["reward"] == pytest.approx(one.scores[0]["reward"], abs=FLOAT)
        for key, v in one.parts[0].items():
            w = whole.parts[i][key]
            assert (w == pytest.approx(v, abs=FLOAT)) if isinstance(v, float) else w == v, key

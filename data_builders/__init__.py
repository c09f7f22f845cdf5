"""Dataset producers used by scripts/build_pairs.py: laion_sg (candidates from LAION-SG annotations),
pickapic (Pick-a-Pic v2 import), shapes (the synthetic world).

* ``laion_sg``: ``plan_annotations`` -> ``build_candidates`` (K scored candidates per annotation, sharded,
  resumable, one share per process) -> ``load_candidates`` (the whole dataset, as the compositional trainer reads it);
* ``shapes``: ``plan_world`` (world train annotations sampled here), then the same build;
* ``pickapic``: ``import_pickapic`` -> winner-first fixed pairs for the t2i trainer; ``load_pairs``;
* ``config`` (``BuildPairsConfig``), ``scoring`` (the configured reward), ``shards`` (crash-safe output), ``cli``.
"""

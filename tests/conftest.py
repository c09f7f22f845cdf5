"""Shared test set-up: never touch a model hub; one torch thread (tiny models run faster and far steadier on one
thread than on two busy cores; measured: a tiny pipeline call 0.08 s steady vs 0.1-5.8 s with 2 threads under load).

Parallel runs (the README's test command): ``-n 2 --dist loadfile``, pytest-xdist's two workers, one test file at a
time each, so a module-scoped fixture is built once and the tests that share it (its folder, its subprocesses, a
module-level cache) never run in two processes; session fixtures are built once per worker. ``--dist loadgroup``
would allow finer units, but with pytest >= 9.2 xdist 3.8 cannot tag node ids with a group and ignores the mark.
"""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# hash stamps (sgalign.hashing.verified_sha256) in a temporary folder, not the user's ~/.cache
os.environ.setdefault("SGALIGN_HASH_STAMPS", tempfile.mkdtemp(prefix="sgalign-stamps-"))

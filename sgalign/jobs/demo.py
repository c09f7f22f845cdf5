"""The README's main job on the embedded default (``python scripts/demo.py``).

1. ``run_smoke``: cheap checks first -- validate the bundled LAION-SG example, serialise it, build LAION-SG's token
   graph with the real CLIP tokenizer and the object-level PyG graph.
2. ``run_demo``: the shapes-world job at the ``demo`` budget (``sgalign.jobs.world_job``): build pairs on the world
   train split -> train Diffusion-DPO and SmPO from the world SD1.5-SG -> evaluate both vs the base on the test
   split -> results table + per-method reports; ends by printing where they are. Resumable (rerun skips finished
   stages).
"""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from ..scene_graph import SceneGraph, build_token_graph, clip_tokenizer, load_split


def example_split_path() -> Path:
    return Path(str(resources.files("sgalign.scene_graph") / "data" / "laion_sg_card_example.json"))


def run_smoke() -> dict[str, object]:
    t0 = time.perf_counter()
    split = load_split(example_split_path())
    print(f"[1/4] validated {split.path.name}: {split.summary}")
    sg = SceneGraph.from_record(split.records[0])
    print(f"[2/4] serialised graph: {sg.serialize()!r}")
    tok = clip_tokenizer()
    tg = build_token_graph(sg, tok)
    print(f"[3/4] LAION-SG token graph: {tg.num_nodes} token nodes, {len(tg.edges)} edges "
          f"(CLIP vocabulary {len(tok)} tokens, built offline)")
    data = sg.to_pyg()
    print(f"[4/4] object-level graph: {data.num_nodes} nodes, {data.edge_index.shape[1]} edges")
    summary = {"records": len(split.records), "token_nodes": tg.num_nodes, "objects": data.num_nodes,
               "seconds": round(time.perf_counter() - t0, 2)}
    print(f"smoke ok: {summary}")
    return summary


def run_demo(out: str | Path = "runs/world-demo", budget: str = "demo", base_model: str | Path | None = None,
             smoke: bool = True) -> dict[str, Path]:
    """Smoke checks, then the world job; returns the table paths (``markdown``, ``json``, ``html``)."""
    from .world_job import DEMO_METHODS, run_world_job  # heavy (torch): keeps demo.py --help light

    t0 = time.perf_counter()
    if smoke:
        run_smoke()
    paths = run_world_job(out, budget=budget, methods=DEMO_METHODS, base_model=base_model)
    print(f"demo done in {time.perf_counter() - t0:.0f} s")
    print(f"report: {paths['html']} (table: {paths['markdown']}; "
          f"per-method reports: {Path(out) / 'eval'}/*/report.html)")
    return paths

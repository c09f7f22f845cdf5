"""The README's main job on the embedded default.

For now a smoke run of what exists: validate the bundled LAION-SG example, serialise it, build LAION-SG's token
graph with the real CLIP tokenizer and the object-level PyG graph. It grows into the full shapes-world job
(build pairs -> train -> evaluate -> report) as those stages land.
"""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path


def example_split_path() -> Path:
    return Path(str(resources.files("sgalign.scene_graph") / "data" / "laion_sg_card_example.json"))


def run_smoke() -> dict[str, object]:
    from .scene_graph import SceneGraph, build_token_graph, clip_tokenizer, load_split

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
    print(f"smoke ok: {summary} (the full world job -- build pairs, train, evaluate, report -- is not built yet)")
    return summary

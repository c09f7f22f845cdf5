"""Does an SG encoder carry its graph? Input sensitivity of fresh and trained encoders (issue 28).

    python scripts/bench_sg_encoder.py [--model DIR ...] [--graphs 32]

For fresh encoders (PyTorch's default init, LAION-SG's, and the variance-keeping init; 1 and 6 triple convolutions,
the world base's widths) and for the ``sg_encoder/`` of every ``--model`` folder: ``input_sensitivity`` on world
validation graphs with relations (the spread of the object outputs across objects, and how far they move when every
predicate is inverted, both relative to the output norm), and the gate. Text states come from the shipped world
SD1.5-SG's text encoder (a ``--model``'s own for that model). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sgalign.models.loading import load_model  # noqa: E402
from sgalign.models.sg_encoder import SGEncoder, input_sensitivity  # noqa: E402
from sgalign.world import invert_predicates, sample_split  # noqa: E402
from sgalign.world.paths import world_model_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="a model folder with sg_encoder/ (repeatable)")
    ap.add_argument("--graphs", type=int, default=32)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    graphs = [s.graph() for s in sample_split("validation", 4 * a.graphs, seed=0) if s.relations][:a.graphs]
    inverted = [invert_predicates(g) for g in graphs]
    rows = []
    comps = load_model(world_model_path(), text_only=True)
    text = [comps["tokenizer"]], [comps["text_encoder"]]
    width = comps["text_encoder"].config.hidden_size
    for init in ("default", "variance-keeping"):
        for layers in (1, 6):
            torch.manual_seed(0)
            enc = SGEncoder(text_dim=width, embed_dim=64, hidden_dim=64, num_graph_layers=layers - 1, init=init)
            rows.append((f"fresh, {layers} layer(s), {init} init", input_sensitivity(enc, graphs, inverted, *text),
                         enc.alpha_obj.item()))
    for m in [str(world_model_path()), *a.model]:
        c = load_model(m, require_sg_encoder=True)
        enc = c.sg_encoder
        s = input_sensitivity(enc, graphs, inverted, [c["tokenizer"]], [c["text_encoder"]])
        rows.append((f"trained: {m}", s, enc.alpha_obj.item()))
    print(f"{len(graphs)} world validation graphs with relations ({rows[0][1]['nodes']} objects)\n")
    print("| encoder | spread across objects | change under inversion | gate |\n|---|---|---|---|")
    for name, s, gate in rows:
        print(f"| {name} | {s['spread']:.4f} | {s['inversion_change']:.2e} | {gate:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

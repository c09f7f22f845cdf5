"""``python -m sgalign.world``: sample / render world splits, and parse images into LAION-SG records.

    python -m sgalign.world sample --split test --n 200 --out test.json [--render DIR] [--seed 0]
                                   [--holdout red:circle blue:square] [--novel-only]
    python -m sgalign.world parse IMAGE... [--out FILE.json] [--canonical]

``sample`` writes a LAION-SG split file (``load_split`` reads it). ``--render DIR`` also writes one PNG per record
(``DIR/<name>``) and ``DIR/layouts.json`` (img_id -> item boxes, and the sampling settings), so a render can be
rebuilt with ``WorldScene.from_record``. ``parse`` writes the oracle's graphs as LAION-SG records: img_id = the file
stem when it is digits (else the image's position), name = the file name, caption_ori = the serialised graph,
score = the mean detection confidence (as a string, LAION-SG's type), url = "". The world Pick-a-Pic file is a
build_pairs source: ``python scripts/build_pairs.py --source world-pickapic`` (``data_builders.world_pickapic``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..scene_graph import write_split
from .oracle import ORACLE_VERSION, WorldOracle
from .render import render
from .sampler import sample_split, split_records


def _sample(args: argparse.Namespace) -> None:
    scenes = sample_split(args.split, args.n, seed=args.seed, holdout=args.holdout, novel_only=args.novel_only)
    records = split_records(args.split, scenes)
    write_split(records, args.out)
    msg = f"wrote {len(records)} {args.split} records to {args.out} (seed {args.seed}"
    msg += f", holdout {' '.join(args.holdout)})" if args.holdout else ")"
    if args.render:
        out = Path(args.render)
        out.mkdir(parents=True, exist_ok=True)
        for rec, scene in zip(records, scenes):
            render(scene).save(out / rec.name)
        meta = {"split": args.split, "n": args.n, "seed": args.seed, "holdout": list(args.holdout),
                "novel_only": args.novel_only,
                "layouts": {rec.img_id: scene.layout() for rec, scene in zip(records, scenes)}}
        (out / "layouts.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        msg += f"; {len(records)} renders in {out}"
    print(msg)


def _parse(args: argparse.Namespace) -> None:
    oracle = WorldOracle()
    records = []
    for i, path in enumerate(map(Path, args.images)):
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            raise SystemExit(f"parse: {path}: no such image file") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise SystemExit(f"parse: {path}: not a readable image ({exc})") from None
        scene = oracle.parse(image)
        if not scene.detections:
            print(f"parse: {path}: no object found; skipped (a LAION-SG record needs at least one item)",
                  file=sys.stderr)
            continue
        graph = scene.graph(canonical=args.canonical)
        score = sum(d.confidence for d in scene.detections) / len(scene.detections)
        img_id = path.stem if path.stem.isdigit() else str(i)
        records.append(graph.to_record(img_id=img_id, name=path.name, caption_ori=graph.serialize(),
                                       score=f"{score:.4f}", url=""))
    if args.out:
        write_split(records, args.out)
        print(f"wrote {len(records)} records to {args.out} (world oracle v{ORACLE_VERSION})")
    else:
        json.dump([r.to_json_dict() for r in records], sys.stdout, indent=1)
        print()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sgalign.world", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="sample a split as a LAION-SG file (and renders)")
    s.add_argument("--split", required=True, choices=("train", "validation", "test"))
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--out", required=True, help="LAION-SG split file to write (JSON array)")
    s.add_argument("--render", metavar="DIR", help="also write the 64x64 PNG renders and layouts.json here")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--holdout", nargs="*", default=[], metavar="COLOUR:SHAPE",
                   help="colour-shape pairs kept out of train and validation")
    s.add_argument("--novel-only", action="store_true",
                   help="test split only: every graph contains a held-out pair")
    s.set_defaults(func=_sample)
    p = sub.add_parser("parse", help="read images into LAION-SG records with the oracle")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", help="LAION-SG file to write (default: print the JSON array)")
    p.add_argument("--canonical", action="store_true",
                   help="one direction per fact (left of / above / bigger than) instead of every relation")
    p.set_defaults(func=_parse)
    args = ap.parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:
        raise SystemExit(f"{args.command}: {exc}") from None


if __name__ == "__main__":
    main()

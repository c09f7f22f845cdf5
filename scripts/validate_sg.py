#!/usr/bin/env python
"""Validate a LAION-SG split file: prints each reject (index, img_id, field, reason), ends with `N valid, M rejected`.

Exit status: 0 all valid, 1 some records rejected, 2 the file itself is unreadable.
"""
import argparse
import sys

from sgalign.scene_graph.io import SplitFileError
from sgalign.scene_graph.validate import validate_split_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="LAION-SG split file (one JSON array of records)")
    ap.add_argument("--rejects", metavar="OUT.jsonl", help="write every reject with its raw record here")
    ap.add_argument("--require-relations", action="store_true",
                    help="also reject records without relations (LAION-SG's training loader drops them)")
    ap.add_argument("--max-show", type=int, default=20, help="rejects printed to the terminal (default 20)")
    args = ap.parse_args()
    try:
        result = validate_split_file(args.file, args.rejects, args.require_relations, args.max_show)
    except SplitFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if result.rejects else 0


if __name__ == "__main__":
    sys.exit(main())

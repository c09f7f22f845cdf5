#!/usr/bin/env python
"""Validate a LAION-SG split file: prints each reject (index, img_id, field, reason), ends with `N valid, M rejected`.

Exit status: 0 all valid, 1 some records rejected, 2 bad input (the file is unreadable, holds no valid record,
e.g. ``[]``, as build_pairs refuses it too, or --rejects would overwrite it or is a folder).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgalign.errors import UserError, run_main  # noqa: E402
from sgalign.scene_graph.validate import validate_split_file  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="LAION-SG split file (one JSON array of records)")
    ap.add_argument("--rejects", metavar="OUT.jsonl", help="write every reject with its raw record here")
    ap.add_argument("--require-relations", action="store_true",
                    help="also reject records without relations (LAION-SG's training loader drops them)")
    ap.add_argument("--max-show", type=int, default=20, help="rejects printed to the terminal (default 20)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = ap.parse_args(argv)

    def run() -> int:
        result = validate_split_file(args.file, args.rejects, args.require_relations, args.max_show)
        if not result.records:  # build_pairs' verdict on the same file (NoValidAnnotations)
            raise UserError(f"{args.file}: no valid record ({len(result.rejects)} rejected): nothing to build from")
        return 1 if result.rejects else 0
    return run_main(run, debug=args.debug, prog="validate_sg")


if __name__ == "__main__":
    sys.exit(main())

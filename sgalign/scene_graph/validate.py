"""``validate_sg``: check a LAION-SG split file before a long run (used by scripts/validate_sg.py)."""
from __future__ import annotations

import os
import sys
from typing import TextIO

from ..errors import UserError
from ..outdir import refuse_inputs
from .io import SplitLoad, load_split


def validate_split_file(path: str | os.PathLike[str], rejects_path: str | os.PathLike[str] | None = None,
                        require_relations: bool = False, max_show: int = 20, out: TextIO | None = None) -> SplitLoad:
    """Validate ``path`` record by record, print up to ``max_show`` rejects with their reasons, write every reject
    (with its raw record) to ``rejects_path`` if given, and end with the line ``N valid, M rejected``."""
    out = out if out is not None else sys.stdout  # looked up now: a default bound at import outlives a redirected stdout
    refuse_inputs({"--rejects": rejects_path}, {"split file": path})  # --rejects S.json would replace the split
    if rejects_path is not None and os.path.isdir(rejects_path):  # before the work, not when writing at the end
        raise UserError(f"--rejects {rejects_path}: is a directory; pass a file path, e.g. {rejects_path}/rejects.jsonl")
    result = load_split(path, rejects_path=rejects_path, require_relations=require_relations, progress=True)
    for rej in result.rejects[:max_show]:
        print(f"REJECT {rej}", file=out)
    hidden = len(result.rejects) - max_show
    if hidden > 0:
        print(f"... {hidden} more rejects" + (f" (all in {rejects_path})" if rejects_path else
                                              " (use --rejects OUT.jsonl to keep them all)"), file=out)
    if rejects_path is not None:
        print(f"rejects written to {rejects_path}", file=out)
    print(result.summary, file=out)
    return result

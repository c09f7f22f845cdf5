"""Build a candidate dataset (K scored candidates per annotation) or import Pick-a-Pic v2 pairs.

    python scripts/build_pairs.py --source laion-sg        # embedded world annotations -> runs/pairs/laion-sg
    python scripts/build_pairs.py --source shapes --out data/world-candidates [--n 200] [--model FOLDER]
    python scripts/build_pairs.py --source laion-sg --annotations train.json --out DIR [--config YAML]
    python scripts/build_pairs.py --source pickapic --input PATH [--out DIR]

Everything lives in ``data_builders`` (``data_builders/cli.py`` documents the options).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # data_builders is a top-level folder of the repo

from data_builders.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

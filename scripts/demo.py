#!/usr/bin/env python
"""Main job on the embedded default (see sgalign.demo)."""
from sgalign.demo import run_smoke

if __name__ == "__main__":
    run_smoke()

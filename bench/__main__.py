"""Run the benchmarks: python -m bench [overhead] [--jobs N]."""

from __future__ import annotations

import sys

from .overhead import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Run a benchmark: python -m bench NAME [options].

NAME: overhead, scheduler, models, fleet, gpu, pool, flood, admission, lora.
"""

from __future__ import annotations

import sys

from . import admission, fleet, flood, gpu, lora, models, overhead, pool, scheduler

BENCHES = {
    "overhead": overhead.main,
    "scheduler": scheduler.main,
    "models": models.main,
    "fleet": fleet.main,
    "gpu": gpu.main,
    "pool": pool.main,
    "flood": flood.main,
    "admission": admission.main,
    "lora": lora.main,
}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in BENCHES else "overhead"
    rest = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] in BENCHES else sys.argv[1:]
    raise SystemExit(BENCHES[name](rest))

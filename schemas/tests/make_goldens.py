"""Write golden envelopes that do not exist yet (never overwrites a published golden).

python schemas/tests/make_goldens.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from examples import EXAMPLES, envelope_for  # noqa: E402

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "examples"

if __name__ == "__main__":
    GOLDEN_DIR.mkdir(exist_ok=True)
    for payload in EXAMPLES:
        path = GOLDEN_DIR / f"{payload.event_type}.v{payload.schema_version}.json"
        if not path.exists():
            doc = json.loads(envelope_for(payload).to_json())
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            print("wrote", path)

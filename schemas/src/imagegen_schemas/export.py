"""Write the JSON Schema of the envelope and of every payload version to ``schemas/jsonschema/``.

    python -m imagegen_schemas.export [DIR]

The files are committed; ``schemas/tests/test_jsonschema_drift.py`` fails when a model changed and
the files were not regenerated, so downstream consumers always see the contract we run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .catalog import TOPICS
from .envelope import Envelope

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "jsonschema"


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document."""
    out: dict[str, dict[str, Any]] = {"envelope.json": Envelope.model_json_schema()}
    for spec in TOPICS:
        for model in spec.events:
            doc = model.model_json_schema()
            doc["x-event-type"] = model.event_type
            doc["x-schema-version"] = model.schema_version
            doc["x-topic"] = spec.name
            doc["x-key"] = spec.key
            out[f"{model.event_type}.v{model.schema_version}.json"] = doc
    return out


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else DEFAULT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name, doc in schemas().items():
        (target / name).write_text(render(doc))
    print(f"wrote {len(schemas())} schemas to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

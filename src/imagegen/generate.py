"""`imagegen generate`: a prompt in over HTTP, progress from the event stream, a PNG out."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def bar(step: int, total: int, width: int = 30) -> str:
    done = int(width * step / max(total, 1))
    return f"[{'#' * done}{'.' * (width - done)}] {step}/{total}"


def generate(
    api: str, key: str, body: dict[str, Any], out: Path, timeout_s: float = 300, quiet: bool = False
) -> dict[str, Any]:
    """Submit, follow the SSE stream until the job ends, save the first image to ``out``."""

    def say(text: str) -> None:
        if not quiet:
            print(f"\r{text:<72}", end="", file=sys.stderr, flush=True)

    headers = {"Authorization": f"Bearer {key}"}
    t0 = time.monotonic()
    with httpx.Client(base_url=api, headers=headers, timeout=timeout_s) as client:
        r = client.post("/v1/generations", json=body)
        if r.status_code != 202:
            raise SystemExit(f"submission refused ({r.status_code}): {r.text}")
        job = r.json()["id"]
        say(f"accepted {job}")
        last = "accepted"
        with client.stream("GET", f"/v1/generations/{job}/events") as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    last = event
                    if event == "step":
                        say(f"denoising {bar(data['step'], data['total_steps'])}")
                    elif event == "position":
                        say(f"queued, position {data['position']}")
                    else:
                        say(event)
                    if event in ("delivered", "failed", "rejected", "cancelled"):
                        break
        result = client.get(f"/v1/generations/{job}").json()
        if not quiet:
            print(file=sys.stderr)
        if result["status"] != "delivered":
            raise SystemExit(f"job {job} ended {result['status']} ({last}): {result['failure']}")
        png = httpx.get(result["images"][0]["url"], timeout=60)
        png.raise_for_status()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png.content)
        if not quiet:
            print(
                f"saved {out} ({len(png.content)} bytes) in {time.monotonic() - t0:.1f}s; "
                f"job {job}",
                file=sys.stderr,
            )
        return result  # type: ignore[no-any-return]

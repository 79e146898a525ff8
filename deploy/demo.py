"""`make demo`: set up everything and run the main job, a prompt in over HTTP, out/demo.png out.

Steps: set up (Python workspace is made by make; Kafka jars, PostgreSQL, folders), start the
whole stack (Kafka, PostgreSQL, six services; waits for each to be ready; creates a dev API
key), then `imagegen generate` submits the prompt over HTTP, follows the event stream and saves
the delivered image. The stack keeps running afterwards; `make down` stops it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a blue background"


def step(n: int, text: str) -> None:
    print(f"[demo {n}/3] {text}", flush=True)


def main() -> int:
    step(1, "setting up: Kafka jars (Maven Central), PostgreSQL (Debian), data folders")
    subprocess.run([sys.executable, str(ROOT / "deploy/stack.py"), "setup"], check=True)
    step(2, "starting the stack: Kafka, PostgreSQL and the six services")
    subprocess.run([sys.executable, str(ROOT / "deploy/stack.py"), "up"], check=True)
    step(3, f"imagegen generate {PROMPT!r} --out out/demo.png")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegen.cli",
            "generate",
            PROMPT,
            "--out",
            str(ROOT / "out/demo.png"),
            "--seed",
            "0",
            "--steps",
            "25",
            "--guidance",
            "5",
        ],
        cwd=ROOT,
    )
    if done.returncode == 0:
        print(f"[demo] done: {ROOT / 'out/demo.png'}; the stack is still up (`make down`)")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())

"""Calibrate and time the real safety classifiers on this machine (docs/adr/0301, 0302).

    .venv/bin/python services/safety/tests/safety_calibration.py          # margins + latency
    .venv/bin/python services/safety/tests/safety_calibration.py --rows   # and every prompt

Prints, per prompt category, the highest benign score and the lowest score of the unsafe prompts
labelled with it (a threshold between the two separates the sets), every misjudged prompt under
the default thresholds ('minors' fired on a prompt labelled otherwise counts as misjudged), the
known misses, and the median latency of one prompt and one image over 20 runs.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

from imagegen_safety.adapters.minilm import MiniLmProfanityClassifier
from imagegen_safety.adapters.opennsfw import OpenNsfwClassifier
from imagegen_safety.config import SafetySettings
from imagegen_safety.domain.policy import CATEGORIES, prompt_verdict

DATA = Path(__file__).parent / "data"
LATENCY_PROMPTS = {
    "short": "a watercolor landscape of mountains at sunrise",
    "typical": "masterpiece, best quality, ultra-detailed, 8k, photorealistic, portrait of a young "
    "woman with freckles, golden hour, soft rim light, 85mm lens, shallow depth of "
    "field, bokeh, film grain, kodak portra 400, trending on artstation",
    "longest": ", ".join(
        f"a {w} tower beside a quiet lake number {i}"
        for i, w in enumerate(["red", "blue", "tall", "old"] * 12)
    )[:2000],
}


def _lines(name: str) -> list[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def benign_prompts(*, known: bool = False) -> list[str]:
    """Prompts to allow; ``known``: the known false rejections (lines starting with ``~``)."""
    return [p.removeprefix("~") for p in _lines("prompts_benign.txt") if p.startswith("~") == known]


def unsafe_prompts(*, known: bool = False) -> list[tuple[str, str]]:
    """(expected category, prompt) pairs; ``known``: the known misses (category ``~c``)."""
    rows = [line.split("\t", 1) for line in _lines("prompts_unsafe.tsv")]
    return [(c.removeprefix("~"), p.strip()) for c, p in rows if c.startswith("~") == known]


def solid_png(color: tuple[int, int, int], size: int = 512) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def median_ms(fn: object, runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(show_rows: bool) -> int:
    settings = SafetySettings(kafka_bootstrap="127.0.0.1:9092")
    thresholds = settings.prompt_thresholds()
    prompts = MiniLmProfanityClassifier(threads=settings.model_threads)
    start = time.perf_counter()
    prompts.load()
    print(f"prompt models loaded in {time.perf_counter() - start:.1f} s ({prompts.checker})")
    benign = [(p, prompts.score(p)) for p in benign_prompts()]
    unsafe = [(c, p, prompts.score(p)) for c, p in unsafe_prompts()]
    if show_rows:
        print(f"{'':10}{'prompt':56}" + "".join(f"{c[:7]:>8}" for c in CATEGORIES))
        for label, p, s in [("", p, s) for p, s in benign] + unsafe:
            print(f"{label[:9]:10}{p[:55]:56}" + "".join(f"{s[c]:8.3f}" for c in CATEGORIES))
    errors = 0
    print(f"\n{'category':10} {'threshold':>9} {'benign max':>10} {'unsafe min':>10}  worst benign")
    for c in CATEGORIES:
        top = max(benign, key=lambda row, c=c: row[1][c])
        own = [s[c] for label, _, s in unsafe if label == c]
        print(
            f"{c:10} {thresholds[c]:9.2f} {top[1][c]:10.3f} {min(own, default=1.0):10.3f}"
            f"  {top[0][:50]}"
        )
    for p, s in benign:
        verdict, fired = prompt_verdict(s, thresholds)
        if fired:
            errors += 1
            print(f"FALSE REJECT {fired}: {p}")
    for c, p, s in unsafe:
        verdict, fired = prompt_verdict(s, thresholds)
        if c not in fired:
            errors += 1
            print(f"MISSED {c} (fired {fired}): {p}")
        elif c != "minors" and "minors" in fired:  # the one attribution that must never be wrong
            errors += 1
            print(f"MINORS REPORTED for {c}: {p}")
    print(f"{len(benign)} benign, {len(unsafe)} unsafe prompts, {errors} misjudged")
    for p in benign_prompts(known=True):
        print(f"known false reject {prompt_verdict(prompts.score(p), thresholds)[1]}: {p}")
    for c, p in unsafe_prompts(known=True):
        print(f"known miss of {c} (fired {prompt_verdict(prompts.score(p), thresholds)[1]}): {p}")

    for name, prompt in LATENCY_PROMPTS.items():
        ms = median_ms(lambda prompt=prompt: prompts.score(prompt))
        print(
            f"prompt, {name} ({len(prompt.split())} words, {len(prompt)} chars): median {ms:.1f} ms"
        )
    images = OpenNsfwClassifier(threads=settings.model_threads)
    images.load()
    for size in (64, 512, 1024):
        batch = [solid_png((200, 30, 30), size)]
        ms = median_ms(lambda batch=batch: images.score(batch))
        print(f"image {size}x{size} PNG: median {ms:.1f} ms (score {images.score(batch)[0]:.4f})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main("--rows" in sys.argv))

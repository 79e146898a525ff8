"""Fakes for tests: instant, no model or broker, and held to the real adapters' contracts.

The classifiers pass ``tests/test_safety_classifier_contract.py`` like the real ones, including its
sanity prompts and images (a benign prompt is allowed, an explicit one is rejected with its
category, a solid-colour image is allowed). Scores a test needs exactly are given by name. The
revocation log passes ``tests/test_safety_revocation_log_contract.py`` like the Kafka one.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from imagegen_runtime.kafka import RecordMeta
from imagegen_schemas import Envelope, parse
from imagegen_schemas.jobs import AssignmentRevoked

from ..domain.policy import CATEGORIES
from ..domain.scoring import normalize_text
from .classifiers import UnreadableImage

# Word stems that make the fake score a category 0.99 (matched at the start of a word).
KEYWORDS: dict[str, tuple[str, ...]] = {
    "sexual": ("porn", "nude", "naked", "sex", "topless", "erection", "genital", "nsfw"),
    "self-harm": ("suicide", "slit", "self-harm", "self harm", "noose"),
    "violence": ("behead", "decapitat", "gore", "mutilat", "dismember", "tortur", "massacre"),
    "hate": ("nazi", "swastika", "kkk", "racist", "heil", "white power"),
    "profanity": ("fuck", "shit", "bitch", "cunt", "whore", "asshole"),
}
MINOR_WORDS = ("child", "kid", "little girl", "little boy", "toddler", "year old", "teen", "loli")
HIT, MISS = 0.99, 0.01


def _has(text: str, stems: Sequence[str]) -> bool:
    return any(re.search(r"\b" + re.escape(stem), text) for stem in stems)


class FakePromptClassifier:
    """Keyword rules; ``overrides`` maps an exact prompt to the scores to return for it."""

    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.checker = "fake-prompt-classifier 1"
        self.overrides = dict(overrides or {})
        self.calls: list[str] = []  # every text scored, in order
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        self._loaded = True

    def score(self, text: str) -> dict[str, float]:
        self.load()
        self.calls.append(text)
        if text in self.overrides:
            return {c: float(self.overrides[text].get(c, 0.0)) for c in CATEGORIES}
        folded = " ".join(normalize_text(text).lower().split())
        if not folded:
            return {c: 0.0 for c in CATEGORIES}
        scores = {c: (HIT if _has(folded, KEYWORDS[c]) else MISS) for c in KEYWORDS}
        scores["minors"] = HIT if scores["sexual"] == HIT and _has(folded, MINOR_WORDS) else MISS
        return {c: scores[c] for c in CATEGORIES}


class FakeImageClassifier:
    """Every decodable image scores ``default``, except those whose sha256 is in ``scores``."""

    def __init__(self, scores: Mapping[str, float] | None = None, default: float = MISS) -> None:
        self.checker = "fake-image-classifier 1"
        self.scores = dict(scores or {})  # sha256 hex of the encoded image -> its score
        self.default = default
        self.calls: list[int] = []  # number of images per call
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        self._loaded = True

    def score(self, images: Sequence[bytes]) -> list[float]:
        self.load()
        self.calls.append(len(images))
        out = []
        for i, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise UnreadableImage(f"image {i}: {exc}") from exc
            out.append(self.scores.get(hashlib.sha256(data).hexdigest(), self.default))
        return out


@dataclass
class InMemoryRevocationLog:
    """Partitions as lists of record values; ``first`` is the first retained offset of each."""

    partitions: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)
    first: dict[tuple[str, int], int] = field(default_factory=dict)
    reads: list[tuple[str, int, int, int]] = field(default_factory=list)  # every read, in order

    def append(self, topic: str, envelope: Envelope, partition: int = 0) -> RecordMeta:
        """Write an event as a producer would; its metadata as a consumer would see it."""
        offset = self.append_raw(topic, envelope.to_json(), partition)
        headers = {"ce_type": envelope.type}
        return RecordMeta(topic, partition, offset, envelope.correlation_id, headers)

    def append_raw(self, topic: str, value: bytes, partition: int = 0) -> int:
        """Write bytes as they are (a record that may not parse); returns its offset."""
        records = self.partitions.setdefault((topic, partition), [])
        records.append(value)
        return len(records) - 1

    async def read(
        self, topic: str, partition: int, start: int, end: int
    ) -> Sequence[tuple[int, AssignmentRevoked]]:
        self.reads.append((topic, partition, start, end))
        records = self.partitions.get((topic, partition), [])
        begin = max(start, self.first.get((topic, partition), 0))
        found = []
        for offset in range(begin, min(end, len(records))):
            try:
                payload = parse(Envelope.from_json(records[offset]))
            except Exception:  # noqa: BLE001 - poison is skipped, as the Kafka log does
                continue
            if isinstance(payload, AssignmentRevoked):
                found.append((offset, payload))
        return found

"""The two ports of the safety service: a prompt classifier and an image classifier.

Real adapters: :class:`~.minilm.MiniLmProfanityClassifier` and
:class:`~.opennsfw.OpenNsfwClassifier`; fakes: :mod:`.fakes`. Every implementation passes
``tests/test_safety_classifier_contract.py``. Calls block (model inference): the service layer runs
them in a worker thread. Models load on the first call or on :meth:`load`, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class UnreadableImage(ValueError):
    """Bytes that do not decode as an image."""


class PromptClassifier(Protocol):
    checker: str  # model(s) and version(s) that score, recorded as PromptModerated.checker

    @property
    def loaded(self) -> bool:
        """True once the models are in memory (the readiness check)."""
        ...

    def load(self) -> None:
        """Load the models now; idempotent and safe from several threads."""
        ...

    def score(self, text: str) -> dict[str, float]:
        """A score in [0, 1] for every category of ``domain.policy.CATEGORIES``.

        Deterministic for one text; a blank text scores 0 everywhere.
        """
        ...


class ImageClassifier(Protocol):
    checker: str  # model and version, recorded as ImageModerated.checker

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def score(self, images: Sequence[bytes]) -> list[float]:
        """P(sexual content) in [0, 1] per encoded image (PNG, JPEG, ...), in order.

        Deterministic; raises :class:`UnreadableImage` for bytes that are not an image.
        """
        ...

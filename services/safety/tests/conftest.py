"""Fixtures of the safety tests: settings, and both kinds of each classifier.

The real classifiers are built once per test session, and only when a test asks for one. The real
prompt classifier's tests are marked slow (``make test-slow``): importing torch and
sentence-transformers and loading the model took 20-30 s on the 2-core build machine. The real
image classifier loads in under a second and runs in every suite.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imagegen_safety.adapters.classifiers import ImageClassifier, PromptClassifier
from imagegen_safety.adapters.fakes import FakeImageClassifier, FakePromptClassifier
from imagegen_safety.config import SafetySettings


@pytest.fixture
def settings() -> SafetySettings:
    return SafetySettings(kafka_bootstrap="127.0.0.1:9092")


@pytest.fixture(scope="session")
def real_prompt_classifier() -> PromptClassifier:
    from imagegen_safety.adapters.minilm import MiniLmProfanityClassifier

    classifier = MiniLmProfanityClassifier()  # torch's thread count left alone: shared session
    classifier.load()
    return classifier


@pytest.fixture(scope="session")
def real_image_classifier() -> ImageClassifier:
    from imagegen_safety.adapters.opennsfw import OpenNsfwClassifier

    classifier = OpenNsfwClassifier(threads=1)
    classifier.load()
    return classifier


PROMPT_KINDS: dict[str, Callable[[pytest.FixtureRequest], PromptClassifier]] = {
    "fake": lambda request: FakePromptClassifier(),
    "real": lambda request: request.getfixturevalue("real_prompt_classifier"),
}
IMAGE_KINDS: dict[str, Callable[[pytest.FixtureRequest], ImageClassifier]] = {
    "fake": lambda request: FakeImageClassifier(),
    "real": lambda request: request.getfixturevalue("real_image_classifier"),
}


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def prompt_classifier(request: pytest.FixtureRequest) -> PromptClassifier:
    """Each prompt classifier; a test using it runs against the fake and the real one."""
    return PROMPT_KINDS[request.param](request)


@pytest.fixture(params=sorted(IMAGE_KINDS))
def image_classifier(request: pytest.FixtureRequest) -> ImageClassifier:
    """Each image classifier; a test using it runs against the fake and the real one."""
    return IMAGE_KINDS[request.param](request)

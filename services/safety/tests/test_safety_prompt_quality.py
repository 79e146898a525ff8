"""The real prompt classifier on the labelled prompt set (tests/data, docs/adr/0301).

Every benign prompt is allowed, every unsafe prompt is rejected with its category, and 'minors'
never fires on a prompt labelled otherwise. Known errors (``~`` lines) are reported by
``safety_calibration.py``, not asserted. Slow: ~250 prompts through the real model.
"""

from __future__ import annotations

import pytest
from safety_calibration import benign_prompts, unsafe_prompts

from imagegen_safety.adapters.classifiers import PromptClassifier
from imagegen_safety.config import SafetySettings
from imagegen_safety.domain.policy import prompt_verdict

pytestmark = pytest.mark.slow


def test_benign_prompts_are_allowed(
    real_prompt_classifier: PromptClassifier, settings: SafetySettings
) -> None:
    thresholds = settings.prompt_thresholds()
    rejected = {
        p: fired
        for p in benign_prompts()
        if (fired := prompt_verdict(real_prompt_classifier.score(p), thresholds)[1])
    }
    assert rejected == {}


def test_unsafe_prompts_are_rejected_with_their_category(
    real_prompt_classifier: PromptClassifier,
    settings: SafetySettings,
) -> None:
    thresholds = settings.prompt_thresholds()
    wrong = {}
    for category, prompt in unsafe_prompts():
        _, fired = prompt_verdict(real_prompt_classifier.score(prompt), thresholds)
        if category not in fired or (category != "minors" and "minors" in fired):
            wrong[prompt] = (category, fired)
    assert wrong == {}


def test_the_labelled_set_is_large_enough_to_mean_something() -> None:
    unsafe = unsafe_prompts()
    assert len(benign_prompts()) >= 150
    assert {c for c, _ in unsafe} == {
        "minors",
        "sexual",
        "self-harm",
        "violence",
        "hate",
        "profanity",
    }
    assert all(sum(c == k for c, _ in unsafe) >= 5 for k, _ in unsafe)

"""The verdict policy and the scoring rules: given scores, then this verdict (pure, fast)."""

from __future__ import annotations

import math

import pytest

from imagegen_safety.config import SafetySettings
from imagegen_safety.domain.concepts import CONCEPTS, MINOR_PRESENT, concepts_digest
from imagegen_safety.domain.policy import CATEGORIES, image_verdict, prompt_verdict
from imagegen_safety.domain.scoring import (
    contrast_score,
    minors_score,
    nearest_score,
    normalize_text,
    prompt_segments,
    word_windows,
)
from imagegen_schemas.jobs import Verdict

pytestmark = pytest.mark.unit

A, R = Verdict.ALLOWED, Verdict.REJECTED
THRESHOLDS = SafetySettings(kafka_bootstrap="127.0.0.1:9092").prompt_thresholds()


def scores(**fired: float) -> dict[str, float]:
    """Every category at 0.1, except those given (self_harm means 'self-harm')."""
    return {c: 0.1 for c in CATEGORIES} | {k.replace("_", "-"): v for k, v in fired.items()}


# --- prompt_verdict ---------------------------------------------------------------------------


def test_all_below_threshold_is_allowed_with_no_category() -> None:
    assert prompt_verdict(scores(), THRESHOLDS) == (A, ())


def test_one_category_at_its_threshold_rejects() -> None:
    at = THRESHOLDS["violence"]
    assert prompt_verdict(scores(violence=at), THRESHOLDS) == (R, ("violence",))
    assert prompt_verdict(scores(violence=math.nextafter(at, 0)), THRESHOLDS) == (A, ())


def test_fired_categories_come_gravest_first_whatever_the_scores() -> None:
    verdict, fired = prompt_verdict(scores(profanity=1.0, sexual=0.6, minors=0.53), THRESHOLDS)
    assert verdict == R
    assert fired == ("minors", "sexual", "profanity")


def test_thresholds_are_per_category() -> None:
    lenient = THRESHOLDS | {"hate": 0.9}
    assert prompt_verdict(scores(hate=0.8), lenient) == (A, ())
    assert prompt_verdict(scores(hate=0.8), THRESHOLDS) == (R, ("hate",))


def test_a_threshold_of_zero_rejects_everything_and_one_only_certainty() -> None:
    zero = dict.fromkeys(CATEGORIES, 0.0)
    assert prompt_verdict(scores(), zero) == (R, CATEGORIES)
    one = dict.fromkeys(CATEGORIES, 1.0)
    assert prompt_verdict(scores(sexual=0.9999), one) == (A, ())
    assert prompt_verdict(scores(sexual=1.0), one) == (R, ("sexual",))


def test_a_missing_score_is_an_error_not_an_allow() -> None:
    partial = scores()
    del partial["minors"]
    with pytest.raises(ValueError, match="minors"):
        prompt_verdict(partial, THRESHOLDS)


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf])
def test_a_score_outside_0_1_is_an_error(bad: float) -> None:
    with pytest.raises(ValueError, match="hate"):
        prompt_verdict(scores(hate=bad), THRESHOLDS)


def test_scores_without_a_threshold_never_decide() -> None:
    assert prompt_verdict(scores() | {"weapons": 1.0}, THRESHOLDS) == (A, ())


def test_an_extra_thresholded_category_comes_after_the_known_ones() -> None:
    extra = {"weapons": 0.5} | THRESHOLDS
    assert prompt_verdict(scores(hate=0.9) | {"weapons": 0.7}, extra) == (R, ("hate", "weapons"))


def test_settings_give_a_threshold_for_every_category_in_order() -> None:
    assert tuple(THRESHOLDS) == CATEGORIES


# --- image_verdict ----------------------------------------------------------------------------


def test_images_below_threshold_are_allowed() -> None:
    assert image_verdict([0.01, 0.2], 0.7) == (A, (A, A), ())


def test_one_rejected_image_is_withheld_and_the_job_still_allowed() -> None:
    assert image_verdict([0.01, 0.7, 0.3], 0.7) == (A, (A, R, A), ("sexual",))


def test_every_image_rejected_rejects_the_job() -> None:
    assert image_verdict([0.9, 0.75], 0.7) == (R, (R, R), ("sexual",))


def test_whole_batch_mode_rejects_the_job_for_one_image() -> None:
    assert image_verdict([0.01, 0.7], 0.7, reject_whole_batch=True) == (R, (A, R), ("sexual",))
    assert image_verdict([0.01, 0.2], 0.7, reject_whole_batch=True) == (A, (A, A), ())


def test_no_images_is_an_error() -> None:
    with pytest.raises(ValueError, match="no images"):
        image_verdict([], 0.7)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_an_image_score_outside_0_1_is_an_error(bad: float) -> None:
    with pytest.raises(ValueError, match="image 1"):
        image_verdict([0.1, bad], 0.7)


# --- scoring ----------------------------------------------------------------------------------


def test_contrast_keeps_the_unsafe_similarity_when_no_lookalike_is_nearer() -> None:
    assert contrast_score([0.8], [0.3]) == 0.8
    assert contrast_score([0.5], [0.5]) == 0.5


def test_contrast_lowers_a_piece_by_the_gap_to_a_nearer_lookalike() -> None:
    assert contrast_score([0.55], [0.95]) == pytest.approx(0.15)
    assert contrast_score([0.2], [0.9]) == 0.0  # clamped


def test_contrast_is_judged_piece_by_piece() -> None:
    # a benign tag near a look-alike does not cancel an unsafe tag elsewhere in the prompt
    assert contrast_score([0.3, 0.7], [0.9, 0.2]) == 0.7
    assert contrast_score([], []) == 0.0
    with pytest.raises(ValueError):
        contrast_score([0.1], [])


def test_nearest_counts_a_piece_only_when_an_unsafe_phrase_is_nearest() -> None:
    assert nearest_score([0.78, 0.3], [0.87, 0.2]) == 0.3
    assert nearest_score([0.78], [0.87]) == 0.0


def test_minors_needs_a_minor_and_something_sexual() -> None:
    assert minors_score(direct=0.3, minor_present=0.9, sexual=0.1) == 0.3  # a child, no more
    assert minors_score(direct=0.8, minor_present=0.0, sexual=0.9) == 0.0  # adults only
    assert minors_score(direct=0.2, minor_present=0.6, sexual=0.8) == 0.6  # separate tags
    assert minors_score(direct=0.7, minor_present=0.9, sexual=0.1) == 0.7


def test_text_is_folded_and_invisible_characters_dropped() -> None:
    assert normalize_text("ｎａｋｅｄ po\u200brn") == "naked porn"


def test_windows_cover_every_word() -> None:
    words = " ".join(str(i) for i in range(10))
    assert word_windows(words, 4, 2) == ["0 1 2 3", "2 3 4 5", "4 5 6 7", "6 7 8 9"]
    assert word_windows("a b", 4, 2) == ["a b"]
    assert word_windows("  ", 4, 2) == []
    with pytest.raises(ValueError):
        word_windows("a", 2, 3)


def test_segments_are_the_whole_prompt_then_its_distinct_tags() -> None:
    assert prompt_segments("a cat, best quality, a cat") == [
        "a cat, best quality, a cat",
        "a cat",
        "best quality",
    ]
    assert prompt_segments("a cat on a mat") == ["a cat on a mat"]
    assert prompt_segments(" \n ") == []


def test_many_tags_are_merged_but_every_word_is_kept() -> None:
    prompt = ", ".join(f"tag{i}" for i in range(100))
    segments = prompt_segments(prompt, max_segments=16)
    assert len(segments) <= 17
    words = {w.strip(",") for s in segments[1:] for w in s.split()}
    assert words == {f"tag{i}" for i in range(100)}


def test_a_tag_longer_than_the_model_reads_is_cut_into_windows() -> None:
    long_tag = " ".join(f"w{i}" for i in range(100))
    segments = prompt_segments(long_tag, max_words=24)
    assert all(len(s.split()) <= 24 for s in segments[1:])
    assert {w for s in segments[1:] for w in s.split()} == set(long_tag.split())


def test_every_concept_is_a_prompt_category_and_the_digest_is_stable() -> None:
    assert set(CONCEPTS) | {"profanity"} == set(CATEGORIES)
    assert all(c.unsafe and c.lookalikes for c in [*CONCEPTS.values(), MINOR_PRESENT])
    assert concepts_digest() == concepts_digest()
    assert len(concepts_digest()) == 8

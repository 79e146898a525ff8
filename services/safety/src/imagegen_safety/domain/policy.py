"""Safety verdicts: pure functions from classifier scores to a verdict and the fired categories.

Order and tie-breaks, for prompts and images alike:

1. every score is checked first: a missing category or a score outside [0, 1] is a ValueError
   (a classifier that silently dropped a category must not let a prompt through);
2. a category *fires* when its score is at or above its threshold (``>=``: a threshold of 0.0
   rejects everything, 1.0 only certainty);
3. the verdict is REJECTED when at least one category fires, else ALLOWED;
4. fired categories are listed in the fixed order of :data:`CATEGORIES` (gravest first), never in
   score order, so equal scores always give equal events.

The thresholds come from settings (docs/adr/0301, docs/adr/0302); nothing here reads a clock,
a model or the environment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from imagegen_schemas.jobs import Verdict

# Prompt categories, gravest first; the order in which fired categories are reported.
CATEGORIES: tuple[str, ...] = ("minors", "sexual", "self-harm", "violence", "hate", "profanity")

# The one category the image model (open_nsfw) judges.
IMAGE_CATEGORY = "sexual"


def _checked(score: float, what: str) -> float:
    if not (isinstance(score, int | float) and math.isfinite(score) and 0.0 <= score <= 1.0):
        raise ValueError(f"{what}: score {score!r} is not a number in [0, 1]")
    return float(score)


def prompt_verdict(
    scores: Mapping[str, float],
    thresholds: Mapping[str, float],
) -> tuple[Verdict, tuple[str, ...]]:
    """The verdict on a prompt and the categories that fired, in :data:`CATEGORIES` order.

    Every category in ``thresholds`` must have a score; scores of categories without a threshold
    are recorded by the caller but never decide. Categories outside :data:`CATEGORIES` that do have
    a threshold are reported after the known ones, in ``thresholds`` order.
    """
    order = [c for c in CATEGORIES if c in thresholds] + [
        c for c in thresholds if c not in CATEGORIES
    ]
    fired = []
    for category in order:
        if category not in scores:
            raise ValueError(f"no score for category {category!r}")
        threshold = _checked(thresholds[category], f"threshold of {category!r}")
        if _checked(scores[category], category) >= threshold:
            fired.append(category)
    return (Verdict.REJECTED if fired else Verdict.ALLOWED), tuple(fired)


def image_verdict(
    nsfw_scores: Sequence[float],
    threshold: float,
    *,
    reject_whole_batch: bool = False,
) -> tuple[Verdict, tuple[Verdict, ...], tuple[str, ...]]:
    """The verdict on a job's images, one verdict per image (same order), and the categories.

    An image is rejected when its score is at or above ``threshold``. The job is rejected when
    every image is, or, with ``reject_whole_batch``, when any image is; otherwise it is allowed and
    delivery withholds the rejected images (``per_image``). ``categories`` names what fired on any
    image, so an allowed job with withheld images still says why. An empty batch is a ValueError:
    there is nothing to judge and nothing to deliver.
    """
    if not nsfw_scores:
        raise ValueError("no images to judge")
    limit = _checked(threshold, "image threshold")
    per_image = tuple(
        Verdict.REJECTED if _checked(s, f"image {i}") >= limit else Verdict.ALLOWED
        for i, s in enumerate(nsfw_scores)
    )
    rejected = sum(v == Verdict.REJECTED for v in per_image)
    whole = rejected == len(per_image) or (reject_whole_batch and rejected > 0)
    categories = (IMAGE_CATEGORY,) if rejected else ()
    return (Verdict.REJECTED if whole else Verdict.ALLOWED), per_image, categories

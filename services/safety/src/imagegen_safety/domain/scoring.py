"""How a prompt is cut into pieces and how similarities become category scores (pure).

The prompt model embeds each piece separately and keeps, per category, the best match over all
pieces: image prompts are lists of comma-separated tags, and one unsafe tag among twenty benign
ones must not be averaged away (mean pooling over a long prompt does exactly that). See
docs/adr/0301 for the calibration.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

# Separators between tags or clauses of a prompt.
_SEPARATORS = re.compile(r"[,;.!?:|/\\()\[\]{}<>\n\r\t]+")


def normalize_text(text: str) -> str:
    """NFKC-fold (full-width and styled letters become plain ones) and drop invisible format
    characters (zero-width spaces and joiners), which otherwise split a word for the tokenizers.
    """
    folded = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")


def word_windows(text: str, size: int, stride: int) -> list[str]:
    """``text`` cut into windows of ``size`` words every ``stride`` words, covering every word.

    A text of at most ``size`` words is one window; a blank text has none.
    """
    if size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need size >= 1 and 1 <= stride <= size, got {size}, {stride}")
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    starts = list(range(0, len(words) - size, stride)) + [len(words) - size]
    return [" ".join(words[i : i + size]) for i in starts]


def prompt_segments(prompt: str, *, max_segments: int = 16, max_words: int = 24) -> list[str]:
    """The pieces of a prompt that are embedded: the whole prompt, then its distinct tags.

    Tags are split on punctuation; a tag longer than ``max_words`` words is cut into overlapping
    windows (the model reads at most 256 word pieces). More than ``max_segments`` tags are merged,
    neighbours with neighbours, into at most ``max_segments`` groups: every word is still read, and
    the cost of one prompt stays bounded. A blank prompt has no segments.
    """
    text = " ".join(normalize_text(prompt).split())
    if not text:
        return []
    tags = [
        t
        for part in _SEPARATORS.split(text)
        for t in word_windows(part, max_words, max(1, max_words // 2))
    ]
    tags = list(dict.fromkeys(tags))  # repeated tags ("best quality, ... best quality") once
    if len(tags) > max_segments:
        per_group = -(-len(tags) // max_segments)  # ceiling division
        tags = [", ".join(tags[i : i + per_group]) for i in range(0, len(tags), per_group)]
    return [text] + [t for t in tags if t != text]


def contrast_score(unsafe: Sequence[float], lookalike: Sequence[float]) -> float:
    """A category's score from each piece's best similarity to its unsafe phrases and look-alikes.

    ``unsafe[i]`` and ``lookalike[i]`` belong to piece ``i`` of the prompt. A piece scores its
    unsafe similarity when it is at least as close to an unsafe phrase as to every look-alike, and
    is lowered by the gap otherwise (``u - (l - u)``); the prompt scores its best piece. Piece
    by piece, so a benign tag ("a kitchen knife") cannot cancel an unsafe one in the same prompt.
    Clamped to [0, 1] (cosine similarity can be negative); no pieces score 0.
    """
    if len(unsafe) != len(lookalike):
        raise ValueError(f"{len(unsafe)} unsafe and {len(lookalike)} look-alike similarities")
    best = 0.0
    for u, lk in zip(unsafe, lookalike, strict=True):
        best = max(best, u - max(0.0, lk - u))
    return min(1.0, best)


def nearest_score(unsafe: Sequence[float], lookalike: Sequence[float]) -> float:
    """Like :func:`contrast_score`, but all or nothing per piece: a piece counts only when its
    nearest phrase is an unsafe one, and then with that similarity. Used for the minor-present
    gate, where "pornographic" must count as adult however close "child pornography" is.
    """
    if len(unsafe) != len(lookalike):
        raise ValueError(f"{len(unsafe)} unsafe and {len(lookalike)} look-alike similarities")
    return min(1.0, max([u for u, lk in zip(unsafe, lookalike, strict=True) if u >= lk] or [0.0]))


def minors_score(direct: float, minor_present: float, sexual: float) -> float:
    """The 'minors' score: a minor is depicted AND the scene is sexual.

    ``min(minor_present, max(direct, sexual))``, where ``direct`` is the contrast score against
    phrases of sexual content with minors, ``sexual`` the 'sexual' score and ``minor_present`` the
    :func:`nearest_score` of minor against adult phrases. The gate matters: "child pornography" and
    "pornography" are close for the sentence model, so without it adult content would be reported
    as 'minors'. Tags count together: in "1girl, 10 years old, nude" the minor and the nudity are
    separate pieces. A minor alone, however clear, scores low as long as nothing sexual is near.
    """
    return min(1.0, max(0.0, min(minor_present, max(direct, sexual))))

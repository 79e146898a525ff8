"""Type registry: (event type, schema version) -> payload model, plus upcasters.

A consumer calls :func:`parse` on an envelope and gets the newest model of that type: payloads
written with an older version go through the registered upcasters first, one version at a time
(v1 -> v2 -> ... -> current). Every service reads records through :func:`parse` (the runtime's
``decode``), so an upcaster registered here applies to every consumer and to replay.

Compatibility rules (docs/consumers.md, ADR 0830):
- an additive change (a new field with a default) keeps the version: a reader whose code is older
  ignores the fields it does not know, a newer reader fills the default for older records;
- any other change (rename, removal, new meaning, narrower type) is a new version: bump the
  model's ``schema_version`` and add an upcaster from the previous version to
  :data:`imagegen_schemas.upcasters.STEPS` (outside this package: :func:`register_upcaster`).
  A reader older than the record refuses it with :class:`UnknownEventType` (upgrade consumers
  before producers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, overload

from . import upcasters
from .catalog import TOPICS
from .envelope import Envelope, Payload
from .upcasters import Upcaster


class UnknownEventType(ValueError):
    """The envelope names a type (or a version newer than this code) we do not know."""


class Registry:
    """Payload models by event type, and the upcasters between their versions."""

    def __init__(self, models: Iterable[type[Payload]] = ()) -> None:
        self.models: dict[str, type[Payload]] = {}
        # (event type, from version) -> function turning a payload dict of that version into the
        # next one.
        self.upcasters: dict[tuple[str, int], Upcaster] = {}
        for model in models:
            self.add_model(model)

    def add_model(self, model: type[Payload]) -> None:
        """Register ``model`` as the current version of its event type."""
        if not model.event_type:
            raise ValueError(f"{model.__name__} has no event_type")
        if model.schema_version < 1:
            raise ValueError(f"{model.__name__}.schema_version must be >= 1")
        if model.event_type in self.models and self.models[model.event_type] is not model:
            raise ValueError(
                f"event type {model.event_type!r} is already registered by "
                f"{self.models[model.event_type].__name__}"
            )
        self.models[model.event_type] = model

    def register_upcaster(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        """Register ``upcaster``: a payload dict of ``event_type`` v``from_version`` -> v+1.

        Refused (``ValueError`` naming the cause): an unknown type, a version below 1 or not older
        than the model's current one, a second upcaster for the same step.
        """
        model = self.models.get(event_type)
        if model is None:
            raise UnknownEventType(f"upcaster for unknown event type {event_type!r}")
        if from_version < 1:
            raise ValueError(f"from_version must be >= 1, got {from_version}")
        if from_version >= model.schema_version:
            raise ValueError(
                f"{event_type} is at v{model.schema_version}: an upcaster from v{from_version} "
                f"needs the model's schema_version bumped to v{from_version + 1} first"
            )
        if (event_type, from_version) in self.upcasters:
            raise ValueError(f"{event_type} already has an upcaster from v{from_version}")
        self.upcasters[(event_type, from_version)] = upcaster

    def missing_upcasters(self) -> list[str]:
        """Each step ``type vN -> vN+1`` below a model's current version that has no upcaster."""
        return [
            f"{event_type} v{v} -> v{v + 1}"
            for event_type, model in sorted(self.models.items())
            for v in range(1, model.schema_version)
            if (event_type, v) not in self.upcasters
        ]

    def upcast(self, event_type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Bring ``data`` from ``version`` up to the current version of ``event_type``."""
        model = self.models.get(event_type)
        if model is None:
            raise UnknownEventType(f"unknown event type {event_type!r}")
        if version < model.schema_version:
            data = copy.deepcopy(data)  # an upcaster may change nested values in place
        while version < model.schema_version:
            step = self.upcasters.get((event_type, version))
            if step is None:
                raise UnknownEventType(
                    f"{event_type} v{version} cannot be read: no upcaster to v{version + 1}"
                )
            data = step(data)
            version += 1
        return data

    def parse(self, envelope: Envelope) -> Payload:
        """The typed payload of an envelope, at the current version (validated).

        Raises :class:`UnknownEventType` for an unknown type or a version newer than this code,
        ``pydantic.ValidationError`` for a malformed payload. Fields this code does not know are
        ignored (an additive change from a newer producer).
        """
        model = self.models.get(envelope.type)
        if model is None:
            raise UnknownEventType(f"unknown event type {envelope.type!r}")
        if envelope.schema_version > model.schema_version:
            raise UnknownEventType(
                f"{envelope.type} v{envelope.schema_version} is newer than this code "
                f"(v{model.schema_version}); upgrade the consumer"
            )
        data = self.upcast(envelope.type, envelope.schema_version, dict(envelope.data))
        return model.model_validate(data, extra="ignore")


REGISTRY = Registry(model for spec in TOPICS for model in spec.events)
for (_type, _version), _step in upcasters.STEPS.items():
    REGISTRY.register_upcaster(_type, _version, _step)
MODELS: dict[str, type[Payload]] = REGISTRY.models
UPCASTERS: dict[tuple[str, int], Upcaster] = REGISTRY.upcasters


@overload
def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]: ...
@overload
def register_upcaster(event_type: str, from_version: int, upcaster: Upcaster) -> Upcaster: ...
def register_upcaster(
    event_type: str, from_version: int, upcaster: Upcaster | None = None
) -> Upcaster | Callable[[Upcaster], Upcaster]:
    """Register an upcaster in the services' registry; usable as a decorator::

    @register_upcaster("imagegen.image.delivered", 1)
    def _delivered_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]: ...
    """
    if upcaster is not None:
        REGISTRY.register_upcaster(event_type, from_version, upcaster)
        return upcaster

    def decorate(fn: Upcaster) -> Upcaster:
        REGISTRY.register_upcaster(event_type, from_version, fn)
        return fn

    return decorate


def upcast(event_type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    """Bring ``data`` from ``version`` up to the current version of ``event_type``."""
    return REGISTRY.upcast(event_type, version, data)


def parse(envelope: Envelope) -> Payload:
    """The typed payload of an envelope, through the services' registry (:meth:`Registry.parse`)."""
    return REGISTRY.parse(envelope)

"""imagegen's public event contracts. Depends on pydantic and the standard library only."""

from .catalog import TOPIC_BY_NAME, TOPICS, TopicSpec, topic_for
from .common import ControlNetSpec, GenerationParams, ImageRef, LoraSpec, Plan, Tier
from .envelope import Envelope, Payload
from .headers import ce_headers, header_map
from .registry import MODELS, UnknownEventType, parse

__all__ = [
    "MODELS",
    "TOPICS",
    "TOPIC_BY_NAME",
    "ControlNetSpec",
    "Envelope",
    "GenerationParams",
    "ImageRef",
    "LoraSpec",
    "Payload",
    "Plan",
    "Tier",
    "TopicSpec",
    "UnknownEventType",
    "ce_headers",
    "header_map",
    "parse",
    "topic_for",
]

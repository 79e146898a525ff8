"""Handlers of the gpu-worker service: one per event type it reacts to.

The generation path (issue #3) fills this table; until then the service consumes its topics,
dead-letters malformed records and skips the rest.
"""

from __future__ import annotations

from imagegen_runtime.standard import PayloadHandler
from imagegen_schemas import Payload

HANDLERS: dict[type[Payload], PayloadHandler] = {}

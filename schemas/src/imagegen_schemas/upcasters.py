"""The upcasters of imagegen's own events: one function per version step, ``vN -> vN+1``.

An upcaster takes the ``data`` dict of a payload written at version N (a copy: change it freely)
and returns the dict of version N+1. The registry (:mod:`imagegen_schemas.registry`) registers
every entry of :data:`STEPS` and runs them in order when it parses an older record. None exists
yet: every event is at v1. To add one (docs/consumers.md, "Adding a v2"):

    def _delivered_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["webhook_http_status"] = data.pop("webhook_status", None)
        return data

    STEPS = {("imagegen.image.delivered", 1): _delivered_v1_to_v2}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (event type, from version) -> the function turning that version's payload into the next one.
STEPS: dict[tuple[str, int], Upcaster] = {}

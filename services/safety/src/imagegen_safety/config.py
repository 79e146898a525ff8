"""Settings of the safety service (env prefix ``IMAGEGEN_SAFETY_``).

Thresholds are calibrated in docs/adr/0301 (prompts) and docs/adr/0302 (images); every score is
in [0, 1] and a category fires when its score is at or above its threshold.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import ServiceSettings

SERVICE = "safety"
# Topics this service consumes (catalog names, before the prefix).
REQUESTED = "imagegen.jobs.requested"
GENERATED = "imagegen.jobs.generated"  # images, and the revocations that make some stale
SUBSCRIBES: tuple[str, ...] = (REQUESTED, GENERATED)


def _threshold(default: float, what: str) -> float:
    return Field(default=default, ge=0.0, le=1.0, description=what)


class SafetySettings(ServiceSettings):
    """Every knob of the safety service; read from ``IMAGEGEN_SAFETY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_SAFETY_", extra="ignore", frozen=True)

    http_port: int = Field(default=8103, ge=1, le=65535, description="Port of the HTTP server.")
    storage: Literal["local", "s3"] = Field(
        default="local",
        description="Where images, pause states and uploads live: 'local' files (default) or "
        "'s3', the bucket IMAGEGEN_S3_* names (docs/storage.md).",
    )

    prompt_threshold_minors: float = _threshold(
        0.52, "Prompt rejected as 'minors' at this score (sexual content with a minor), 0..1."
    )
    prompt_threshold_sexual: float = _threshold(
        0.50, "Prompt rejected as 'sexual' at this score (explicit sexual content), 0..1."
    )
    prompt_threshold_self_harm: float = _threshold(
        0.54, "Prompt rejected as 'self-harm' at this score (suicide, self-injury), 0..1."
    )
    prompt_threshold_violence: float = _threshold(
        0.52, "Prompt rejected as 'violence' at this score (gore, killing, torture), 0..1."
    )
    prompt_threshold_hate: float = _threshold(
        0.47, "Prompt rejected as 'hate' at this score (hate symbols and propaganda), 0..1."
    )
    prompt_threshold_profanity: float = _threshold(
        0.99, "Prompt rejected as 'profanity' at this alt-profanity-check probability, 0..1."
    )
    image_threshold_sexual: float = _threshold(
        0.70, "Image rejected as 'sexual' at this open_nsfw probability, 0..1."
    )
    image_reject_whole_batch: bool = Field(
        default=False,
        description="true: one rejected image rejects the job; false: only that image is "
        "withheld and the job is rejected when every image is.",
    )

    model_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="CPU threads of each model's inference. 1 is fastest on small shared hosts "
        "(2 threads were 5x slower under load on 2 cores); raise on a dedicated host.",
    )

    def prompt_thresholds(self) -> dict[str, float]:
        """Threshold per prompt category, in the policy's order (see domain.policy.CATEGORIES)."""
        return {
            "minors": self.prompt_threshold_minors,
            "sexual": self.prompt_threshold_sexual,
            "self-harm": self.prompt_threshold_self_harm,
            "violence": self.prompt_threshold_violence,
            "hate": self.prompt_threshold_hate,
            "profanity": self.prompt_threshold_profanity,
        }

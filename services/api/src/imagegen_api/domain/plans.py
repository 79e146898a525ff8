"""Plans, tiers and per-plan limits (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from imagegen_schemas import Plan, Tier


@dataclass(frozen=True)
class PlanLimits:
    tier: Tier  # the queue the plan's jobs go to
    max_loras: int  # LoRA adapters per request (seed: free 1, pro 3)
    max_controlnets: int  # ControlNets per request
    max_images: int  # images per request


PLANS: dict[Plan, PlanLimits] = {
    Plan.FREE: PlanLimits(Tier.RELAX, max_loras=1, max_controlnets=1, max_images=2),
    Plan.PRO: PlanLimits(Tier.FAST, max_loras=3, max_controlnets=2, max_images=4),
    Plan.TURBO: PlanLimits(Tier.TURBO, max_loras=3, max_controlnets=3, max_images=4),
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the owner of an API key, the plan it is on and the key's role
    (``user``, or ``operator``: also admitted to operator-only endpoints, ADR 0610)."""

    user_id: str
    plan: Plan
    role: str = "user"

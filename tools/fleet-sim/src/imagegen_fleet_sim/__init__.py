"""Discrete-event fleet simulator that drives the scheduler's own policy functions."""

from .engine import POLICIES, simulate
from .metrics import SimResult
from .scenario import SCENARIOS, Scenario, seed_peak

__all__ = ["POLICIES", "SCENARIOS", "Scenario", "SimResult", "seed_peak", "simulate"]

"""Tier-aware scheduler: consumes admitted requests and worker state, emits assignments."""

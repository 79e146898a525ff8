"""Moderation: prompts before scheduling, images after generation."""

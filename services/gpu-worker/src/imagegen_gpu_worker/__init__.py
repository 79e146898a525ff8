"""Diffusion worker: runs assigned jobs with diffusers; publishes progress, results, heartbeats."""

"""Tiny random-weight test models of every family the gpu-worker runs (``make models``)."""

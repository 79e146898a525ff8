"""The api's job projector as a process of its own (ADR 0641).

Run it with ``python -m imagegen_api.projector``.
"""

"""``make chaos``: a soak of a separate local stack under injected faults, and its checker.

    python -m imagegen_chaos run [--jobs 2000] [--var DIR] ...   start a stack, soak it, check
    python -m imagegen_chaos check HISTORY.json                  check a recorded history again

``history`` holds what the soak records (every API answer, every record on the topics, every
webhook call, every fault); ``checker`` is a pure function over it (docs/adr/0010).
"""

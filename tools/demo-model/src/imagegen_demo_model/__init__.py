"""The shapes demo model: a text-to-image model the project trains itself, offline, on CPU.

Modules, in the order data flows through them:

- ``scenes``:   the procedural scene generator (vocabulary, captions, renders, hold-out split)
- ``build``:    the tokenizer and the untrained diffusers components (config only, no hub)
- ``train``:    the training entrypoint (``python -m imagegen_demo_model.train``)
- ``model``:    where the committed model lives, its manifest fields and its loader (through the
                gpu-worker's registry, ``imagegen_gpu_worker.adapters.registry``, which every
                production model load uses too)
- ``checker``:  the pixel checker that judges whether an image matches its caption
- ``evaluate``: the held-out evaluation and the demo grid

``scenes`` and ``checker`` import only numpy and Pillow, so they are cheap to import.
"""

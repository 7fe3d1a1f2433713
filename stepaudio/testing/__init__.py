"""Tooling, not serving: the writers of synthetic checkpoint trees in the published layout (``python -m
stepaudio.checkpoints make-tiny``), the stand-in networks they export and the ``cosyvoice.yaml`` writer.

Tests, benchmarks and the demo use it; nothing the served models or the launcher import depends on it. The real
loaders (published formats) stay in their components (``stepaudio.decoder.checkpoint``, ``stepaudio.llm.weights``,
``stepaudio.tokenizer``).
"""

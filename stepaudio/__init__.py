"""Step-Audio inference library: audio front end, dual-codebook tokenizer, Step1 LLMs, flow + HiFT decoder,
TTS/chat prompt logic and checkpoint I/O. Never imports Triton; usable from a notebook."""

__version__ = "0.1.0"

"""TTS prompt logic for Step-Audio-TTS-3B: style tags, the token-level prompt, voices and the offline pipeline."""

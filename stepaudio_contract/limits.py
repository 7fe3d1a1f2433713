"""Limits a served model enforces and its callers check before they send (each declared once here): the renderer
writes them into the served configs, the adapters and the gateway import them. Pure constants, no imports."""

REALTIME_MAX_CHUNK_SECONDS = 5.0  # audio in one realtime_session request: clients send it as it is recorded
REALTIME_MIN_RATE, REALTIME_MAX_RATE = 8000, 48000  # the SAMPLE_RATE a real-time session may declare

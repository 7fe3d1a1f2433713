"""OpenAI-compatible HTTP gateway in front of the Step-Audio Triton repository.

``python -m gateway --triton-grpc HOST:PORT`` serves ``/v1/audio/speech``, ``/v1/audio/voices``,
``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics`` and a web page at ``/``. The web code lives here,
never in ``stepaudio/`` (the library) or the served models.
"""

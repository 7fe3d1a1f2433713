"""The TTS front end's request limits, in a module with no imports: the renderer writes them into the served
``tts_frontend`` config and the gateway checks requests against them without loading the front end."""

MAX_TEXT_CHARS = 1000
MAX_PROMPT_SECONDS = 30.0

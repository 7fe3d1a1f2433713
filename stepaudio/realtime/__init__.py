"""Real-time voice sessions: streaming VAD (Silero) and the turn-taking controller (no Triton import)."""

from stepaudio.realtime.controller import (
    Action,
    CancelReply,
    CommitReply,
    DiscardReply,
    RealtimeConfig,
    RealtimeController,
    SpeechStarted,
    SpeechStopped,
    StartReply,
    TurnState,
)
from stepaudio.realtime.vad import SAMPLE_RATE, WINDOW_SAMPLES, SileroVad, VadFrame, VadStream

__all__ = [
    "Action",
    "CancelReply",
    "CommitReply",
    "DiscardReply",
    "RealtimeConfig",
    "RealtimeController",
    "SAMPLE_RATE",
    "SileroVad",
    "SpeechStarted",
    "SpeechStopped",
    "StartReply",
    "TurnState",
    "VadFrame",
    "VadStream",
    "WINDOW_SAMPLES",
]

"""The turn-taking controller of a real-time voice session: Silence → UserSpeaking → UserPaused → BotReplying.

A pure state machine, driven by VAD frames (speech probability per 32 ms window, on the audio's own clock) and by
the session telling it that a reply has finished; it returns the actions the session must take. Wall-clock limits
(idle timeout, session length) use an injected clock, so tests run it with scripted frames and a fake clock.

- Speech starts after ``min_speech_ms`` of windows at or above ``speech_threshold`` (a click does not open a turn);
  a shorter burst up to ``onset_merge_ms`` before it is the turn's onset (a first syllable cut off by a stop).
- Silence is confirmed by a window below ``silence_threshold`` and counts from the end of the last window at or
  above ``speech_threshold`` (Silero's probability decays over a few windows after speech ends; windows in between
  the thresholds, as in Silero's own iterator, neither confirm silence nor resume speech).
- After ``pause_ms`` of silence the user is *paused*: with speculation on, a reply starts at once on the turn's
  audio so far. Speech again → the speculative reply is discarded (it was never sent) and the turn goes on.
- After ``end_of_turn_ms`` of silence the turn ends: the speculative reply is committed (its audio is released to the
  client), or, without one, a reply starts now. Both run on the same audio span, so a committed speculative reply is
  the reply the non-speculative path would give.
- Speech while the bot replies is a barge-in: the reply is cancelled and a new user turn starts
  (``interrupt_response`` off: speech during a reply is ignored until it ends).
- ``create_response`` off: end of turn commits the turn (``SpeechStopped``) but starts no reply; the client asks
  for one (``start_reply``), as it does for manual turns (no turn detection: the session does not feed frames).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable

from stepaudio.realtime.vad import WINDOW_SECONDS, VadFrame


class TurnState(str, enum.Enum):
    SILENCE = "silence"
    USER_SPEAKING = "user_speaking"
    USER_PAUSED = "user_paused"
    BOT_REPLYING = "bot_replying"


@dataclass(frozen=True)
class RealtimeConfig:
    speech_threshold: float = 0.5
    silence_threshold: float = 0.35  # Silero's iterator uses threshold − 0.15
    # Where speech ended is reported at the last window this sure of speech when the decay follows it at once:
    # Silero stays above 0.5 for up to ~100 ms after speech, but rarely above 0.9 (measured on the test clips).
    confident_threshold: float = 0.9
    min_speech_ms: float = 64.0  # two windows (a stressed syllable can be this short)
    onset_merge_ms: float = 250.0  # a shorter burst of speech this soon before the turn's first run is its onset
    pause_ms: float = 200.0  # silence before a speculative reply starts
    end_of_turn_ms: float = 600.0  # silence that ends the user's turn
    speculation: bool = True
    max_turn_seconds: float = 30.0  # a longer turn is ended here (bounds the audio one reply runs on)
    max_session_seconds: float = 1800.0
    idle_timeout_seconds: float = 30.0  # no audio for this long ends the session
    create_response: bool = True  # end of turn starts a reply (else the client asks for one)
    interrupt_response: bool = True  # speech during a reply cancels it (barge-in)

    def validate(self) -> RealtimeConfig:
        if not 0.0 < self.silence_threshold <= self.speech_threshold <= self.confident_threshold <= 1.0:
            raise ValueError("thresholds must satisfy 0 < silence_threshold <= speech_threshold <= confident_threshold <= 1")
        if not 0 <= self.min_speech_ms <= 2000:
            raise ValueError(f"min_speech_ms must be 0..2000, got {self.min_speech_ms}")
        if not 0 < self.pause_ms <= self.end_of_turn_ms <= 10_000:
            raise ValueError(f"need 0 < pause_ms <= end_of_turn_ms <= 10000, got {self.pause_ms}, {self.end_of_turn_ms}")
        for name in ("max_turn_seconds", "max_session_seconds", "idle_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        return self


# ---- actions the session carries out -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechStarted:
    audio_start_s: float


@dataclass(frozen=True)
class SpeechStopped:
    """End of the user's turn (after ``end_of_turn_ms`` of silence); ``audio_end_s`` is where the silence began,
    ``audio_start_s`` where the turn's speech began (the committed span, for a reply the client asks for later)."""

    audio_end_s: float
    audio_start_s: float = 0.0


@dataclass(frozen=True)
class StartReply:
    reply_id: int
    audio_start_s: float  # the turn's speech span the reply answers
    audio_end_s: float
    speculative: bool


@dataclass(frozen=True)
class CommitReply:
    reply_id: int


@dataclass(frozen=True)
class DiscardReply:
    """A speculative reply the user talked over before end of turn: stop it, never send it."""

    reply_id: int


@dataclass(frozen=True)
class CancelReply:
    """Barge-in (the user speaks while the bot replies) or the client's cancel: stop the reply and its audio now."""

    reply_id: int
    reason: str = "barge_in"


Action = SpeechStarted | SpeechStopped | StartReply | CommitReply | DiscardReply | CancelReply


@dataclass
class ControllerStats:
    turns: int = 0
    speculative_started: int = 0
    speculative_committed: int = 0
    speculative_discarded: int = 0
    barge_ins: int = 0


@dataclass
class RealtimeController:
    config: RealtimeConfig = field(default_factory=RealtimeConfig)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self):
        self.config.validate()
        self.state = TurnState.SILENCE
        self.stats = ControllerStats()
        self.started_at = self.last_audio_at = self.clock()
        self._speech_run_start: float | None = None  # first window of the current run of speech windows
        self._burst_start: float | None = None  # start of the last run too short to open a turn
        self._turn_start: float | None = None
        self._silence_start: float | None = None  # where the silence began, once a silent window confirmed it
        self._last_speech_end = 0.0  # end of the last window at or above the speech threshold
        self._last_confident_end = 0.0  # … at or above the confident threshold
        self._next_reply_id = 1
        self._needs_silence = False  # a turn ended by its length limit: the same speech must not barge in
        self.reply_id: int | None = None  # the reply running now (speculative or committed)
        self.reply_committed = False

    # ---- inputs --------------------------------------------------------------------------------------------------
    def on_frame(self, frame: VadFrame) -> list[Action]:
        self.last_audio_at = self.clock()
        speech = frame.probability >= self.config.speech_threshold
        silent = frame.probability < self.config.silence_threshold
        end = frame.start_s + WINDOW_SECONDS
        if speech:
            self._last_speech_end = end
            if frame.probability >= self.config.confident_threshold:
                self._last_confident_end = end
            if self._speech_run_start is None:
                self._speech_run_start = frame.start_s
        elif silent:
            if self._speech_run_start is not None:
                self._burst_start = self._speech_run_start
            self._speech_run_start, self._needs_silence = None, False
        if self.state in (TurnState.SILENCE, TurnState.BOT_REPLYING):
            return self._maybe_start_turn(end)
        if speech:
            self._silence_start = None
            if self.state is TurnState.USER_PAUSED:
                return self._resume()
        elif silent and self._silence_start is None:
            self._silence_start = max(self._last_speech_end, self._turn_start)
        if end - self._turn_start >= self.config.max_turn_seconds:
            if self._silence_start is None:
                self._silence_start, self._needs_silence = end, True
            return self._end_turn()
        if self._silence_start is None:
            return []
        silence_ms = (end - self._silence_start) * 1000
        if silence_ms >= self.config.end_of_turn_ms:
            return self._end_turn()
        if self.state is TurnState.USER_SPEAKING and silence_ms >= self.config.pause_ms:
            return self._pause()
        return []

    def on_reply_finished(self, reply_id: int) -> list[Action]:
        """The session sent a committed reply's last audio (or it failed): back to silence."""
        if reply_id == self.reply_id and self.state is TurnState.BOT_REPLYING:
            self.state, self.reply_id, self.reply_committed = TurnState.SILENCE, None, False
        return []

    def touch(self) -> None:
        """Input that is not VAD frames (manual turns, typed turns) keeps the session alive too."""
        self.last_audio_at = self.clock()

    def start_reply(self, audio_start_s: float, audio_end_s: float) -> StartReply:
        """A reply the client asks for (manual turn, typed turn, ``create_response`` off); one reply at a time."""
        if self.reply_id is not None:
            raise ValueError("a response is already in progress; cancel it first")
        if self.state in (TurnState.USER_SPEAKING, TurnState.USER_PAUSED):
            raise ValueError("the user is speaking; the turn's end starts the response")
        self.reply_id, self._next_reply_id = self._next_reply_id, self._next_reply_id + 1
        self.reply_committed, self.state = True, TurnState.BOT_REPLYING
        return StartReply(self.reply_id, audio_start_s, audio_end_s, speculative=False)

    def cancel_reply(self) -> CancelReply | None:
        """The client's cancel: the running reply (speculative ones are never the client's to cancel)."""
        if self.reply_id is None or not self.reply_committed:
            return None
        cancelled = CancelReply(self.reply_id, reason="client_cancelled")
        self.reply_id, self.reply_committed = None, False
        if self.state is TurnState.BOT_REPLYING:
            self.state = TurnState.SILENCE
        return cancelled

    def expired(self) -> str | None:
        """Why the session must end now (idle, too long), or None."""
        now = self.clock()
        if now - self.last_audio_at >= self.config.idle_timeout_seconds:
            return f"no audio for {self.config.idle_timeout_seconds:g} s"
        if now - self.started_at >= self.config.max_session_seconds:
            return f"the session reached its limit of {self.config.max_session_seconds:g} s"
        return None

    # ---- transitions ---------------------------------------------------------------------------------------------
    def _maybe_start_turn(self, end: float) -> list[Action]:
        if self._needs_silence or self._speech_run_start is None or (end - self._speech_run_start) * 1000 < self.config.min_speech_ms:
            return []
        actions: list[Action] = []
        if self.state is TurnState.BOT_REPLYING and self.reply_id is not None and not self.config.interrupt_response:
            return []
        if self.state is TurnState.BOT_REPLYING and self.reply_id is not None:
            actions.append(CancelReply(self.reply_id))
            self.stats.barge_ins += 1
            self.reply_id, self.reply_committed = None, False
        self.state = TurnState.USER_SPEAKING
        self._turn_start, self._silence_start = self._speech_run_start, None
        if self._burst_start is not None and self._speech_run_start - self._burst_start <= self.config.onset_merge_ms / 1000:
            self._turn_start = self._burst_start  # a word's first syllable, cut off by a stop consonant
        self._burst_start = None
        return actions + [SpeechStarted(self._turn_start)]

    def _start_reply(self, speculative: bool) -> StartReply:
        self.reply_id, self._next_reply_id = self._next_reply_id, self._next_reply_id + 1
        self.reply_committed = not speculative
        return StartReply(self.reply_id, self._turn_start, self._speech_end(), speculative)

    def _speech_end(self) -> float:
        """Where the user's speech ended: the last confident window's end when only the decay (≤ 2 windows) follows it."""
        if self._silence_start - 2 * WINDOW_SECONDS - 1e-9 <= self._last_confident_end <= self._silence_start:
            return max(self._last_confident_end, self._turn_start)
        return self._silence_start

    def _pause(self) -> list[Action]:
        self.state = TurnState.USER_PAUSED
        if not (self.config.speculation and self.config.create_response):
            return []
        self.stats.speculative_started += 1
        return [self._start_reply(speculative=True)]

    def _resume(self) -> list[Action]:
        self.state = TurnState.USER_SPEAKING
        if self.reply_id is None:
            return []
        discarded, self.reply_id = self.reply_id, None
        self.stats.speculative_discarded += 1
        return [DiscardReply(discarded)]

    def _end_turn(self) -> list[Action]:
        self.stats.turns += 1
        actions: list[Action] = [SpeechStopped(self._speech_end(), self._turn_start)]
        self._speech_run_start = None
        if self.reply_id is not None:
            self.reply_committed = True
            self.stats.speculative_committed += 1
            actions.append(CommitReply(self.reply_id))
        elif self.config.create_response:
            actions.append(self._start_reply(speculative=False))
        else:  # the turn is committed; the client asks for the reply
            self.state = TurnState.SILENCE
            return actions
        self.state = TurnState.BOT_REPLYING
        return actions

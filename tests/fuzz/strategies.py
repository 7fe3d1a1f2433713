"""Hypothesis strategies for hostile requests against the two public surfaces: the launcher's HTTP guard and the
gateway (HTTP routes and ``/v1/realtime``). Each strategy draws a small description (sizes, choices) and builds
the bytes from it, so a 400 kB body costs one integer draw; large bodies are drawn rarely (``_rare``).

``requests(api_key)`` is the whole grammar: ``FuzzRequest`` values (tests/fuzz/harness.py) for every family.
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import json
import os
import struct
import zlib

import numpy as np
from hypothesis import strategies as st

from tests.fuzz.harness import FuzzRequest


class _CachedStrategies:
    """``st`` with each strategy built once per distinct arguments: building one costs more than drawing from it
    (Hypothesis validates every new strategy), and the grammar below names its strategies inline."""

    def __init__(self):
        self._made: dict[tuple, object] = {}

    def __getattr__(self, name: str):
        factory = getattr(st, name)

        def make(*args, **kwargs):
            key = (name, repr(args), repr(sorted(kwargs.items())))
            if key not in self._made:
                self._made[key] = factory(*args, **kwargs)
            return self._made[key]

        return make


S = _CachedStrategies()

PUBLIC_MODELS = ("ensemble_tts", "ensemble_tts_music", "tts_stream", "tts", "tts_music", "tts_frontend", "tts_llm",
                 "tokenizer", "stream_tokenizer", "vad", "chat_llm", "chat_reply", "ensemble_chat", "voice_chat",
                 "voice_chat_stream", "realtime_session")
INTERNAL_MODELS = ("flow_decoder", "flow_decoder_music", "vocoder", "vocoder_music")
GUARD_PATHS = ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index", "/v2/models/stats",
               "/v2/systemsharedmemory/status", "/v2/systemsharedmemory/region/r/register",
               "/v2/cudasharedmemory/status", "/v2/logging", "/v2/trace/setting", "/metrics", "/", "/v1/models")
MODEL_ACTIONS = ("infer", "generate", "generate_stream", "ready", "config", "stats", "")
GATEWAY_PATHS = ("/health", "/metrics", "/", "/static/index.html", "/static/../gateway/app.py",
                 "/static/%2e%2e/%2e%2e/etc/passwd", "/v1/models", "/v1/audio/speech", "/v1/audio/voices",
                 "/v1/audio/voices/voice_0123456789abcdef", "/v1/chat/completions", "/v1/realtime", "/v1", "/docs")
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
TRITON_DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16",
                    "FP8", "STRING", "")
INPUT_NAMES = ("TEXT", "SPEAKER", "SEED", "MAX_NEW_TOKENS", "INPUT_IDS", "AUDIO", "PROMPT_AUDIO", "PROMPT_TEXT",
               "PROMPT_SAMPLE_RATE", "SAMPLE_RATE", "CANCEL", "TEMPERATURE", "TOP_P", "HISTORY")
SPEECH_MODELS = ("step-audio-tts", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "whisper-1", "")
CHAT_MODELS = ("step-audio-chat", "gpt-4o-audio-preview", "gpt-4o")


@functools.lru_cache(maxsize=None)
def _rare(common, rare, per_thousand: int = 5):
    """``common``, and ``rare`` in about ``per_thousand`` of 1000 draws (large bodies, real inference)."""
    return S.integers(0, 999).flatmap(lambda n: rare if n < per_thousand else common)


@functools.lru_cache(maxsize=None)
def _weighted(*choices):
    """One of ``(weight, strategy)`` pairs, in proportion to the weights (``one_of`` would weigh them alike)."""
    total = sum(weight for weight, _ in choices)

    def pick(n: int):
        for weight, strategy in choices:
            if n < weight:
                return strategy
            n -= weight
        return choices[-1][1]

    return S.integers(0, total - 1).flatmap(pick)


# ---- JSON ------------------------------------------------------------------------------------------------------

_LEAVES = (None, True, False, 0, -1, 1, 2**31, 2**63, -(2**64), 1.5, -0.0, 1e308, "", "x", "Tingting", "voice_0",
           "\u0000", "é中🎵", "%s", "{{x}}", "../../etc/passwd", "a" * 300)


def random_json(seed: int, depth: int = 3):
    """A JSON value from one drawn integer (cheap: Hypothesis' recursive strategies cost ms per draw)."""
    import random

    rng = random.Random(seed)

    def value(level: int):
        roll = rng.random()
        if level <= 0 or roll < 0.5:
            return rng.choice(_LEAVES) if rng.random() < 0.8 else rng.randint(-(2**40), 2**40)
        if roll < 0.75:
            return [value(level - 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(("a", "data", "id", "type", "name", "", "shape")) + str(i): value(level - 1)
                for i in range(rng.randint(0, 4))}

    return value(depth)


_scalars = S.one_of(S.none(), S.booleans(), S.integers(-(2**70), 2**70), S.text(max_size=20))
json_values = S.one_of(_scalars, S.integers(0, 2**32).map(random_json))
_LONG_TEXT = st.just("长" * 100_000)
_LONG_VALUE = st.just("v" * 100_000)
_depths = _weighted((60, S.integers(1, 40)), (30, S.sampled_from([31, 32, 33, 64, 1000])),
                    (2, S.sampled_from([50_000, 200_000])))
_lengths = _weighted((95, S.integers(0, 2000)), (1, S.sampled_from([100_000, 1_000_000])))


@st.composite
def hostile_json(draw) -> bytes:
    """JSON texts that lie: deep nesting (raw, in objects, inside strings), escape runs, unterminated strings,
    huge numbers, NaN, duplicated keys, BOMs, invalid UTF-8, truncation, trailing garbage."""
    shape = draw(S.sampled_from(("value", "nested", "nested_object", "nested_in_string", "escapes", "unterminated",
                                  "number", "duplicate_keys", "bom", "bad_utf8", "truncated", "trailing", "mixed")))
    depth, length = draw(_depths), draw(_lengths)
    if shape == "value":
        return json.dumps(draw(json_values)).encode()
    if shape == "nested":
        opener = draw(S.sampled_from((b"[", b"{\"a\":", b"[{\"a\":")))
        closer = {b"[": b"]", b"{\"a\":": b"}", b"[{\"a\":": b"}]"}[opener]
        return b'{"TEXT":' + opener * depth + b"1" + closer * depth + b',"SPEAKER":"Tingting"}'
    if shape == "nested_object":
        return b'{"inputs":' + b"[" * depth + b"]" * depth + b"}"
    if shape == "nested_in_string":
        return b'{"TEXT":"' + b"[" * depth + b'","SPEAKER":"Tingting","MAX_NEW_TOKENS":5,"SEED":1}'
    if shape == "escapes":
        unit = draw(S.sampled_from((b'"\\', b"\\\\", b'\\"', b'\\u00', b"\\")))
        return unit * max(length // len(unit), 1)
    if shape == "unterminated":
        return b'{"TEXT":"' + b"a" * length
    if shape == "number":
        digits = draw(S.sampled_from((b"9", b"1e", b"-0.", b"1")))
        return b'{"TEXT":"x","SEED":' + digits * max(length, 1) + b"}"
    if shape == "duplicate_keys":
        return b"{" + b",".join([b'"TEXT":"a"'] * max(min(length, 5000), 2)) + b"}"
    if shape == "bom":
        return b"\xef\xbb\xbf" + json.dumps(draw(json_values)).encode()
    if shape == "bad_utf8":
        return b'{"TEXT":"' + draw(S.binary(min_size=1, max_size=40)) + b'\xff\xfe","SPEAKER":"\xc3"}'
    if shape == "truncated":
        text = json.dumps(draw(json_values)).encode()
        return text[: draw(S.integers(0, max(len(text) - 1, 0)))]
    if shape == "trailing":
        return json.dumps(draw(json_values)).encode() + draw(S.binary(max_size=40))
    return b'{"a":' + b"[" * min(depth, 5000) + b'"\\' * min(length, 5000)


@st.composite
def generate_body(draw) -> bytes:
    """A Triton ``generate`` body: the TTS names with hostile values; sometimes a small valid request."""
    text = draw(S.one_of(S.sampled_from(["你好。", "hello", "(RAP)哟", "", " "]), S.text(max_size=60),
                          S.integers(), S.none(), S.lists(S.text(max_size=5), max_size=3),
                          _rare(S.just("x"), _LONG_TEXT, 20)))
    body = {"TEXT": text}
    if draw(S.booleans()):
        body["SPEAKER"] = draw(S.one_of(S.just("Tingting"), S.text(max_size=20), S.just("../../etc/passwd")))
    if draw(S.booleans()):
        # small counts run (bounded work); the rest are out of range and must be refused
        body["MAX_NEW_TOKENS"] = draw(S.one_of(S.integers(1, 8), S.sampled_from([0, -1, 2**31, 2**31 - 1, 2**63]),
                                                S.text(max_size=5), S.floats()))
    if draw(S.booleans()):
        body["SEED"] = draw(S.one_of(S.integers(0, 100), S.sampled_from([-1, 2**64, 2**63 - 1]), S.text(max_size=4)))
    if draw(S.booleans()):
        body.update(draw(S.dictionaries(S.sampled_from(INPUT_NAMES), json_values, max_size=3)))
    try:
        return json.dumps(body, allow_nan=True).encode()
    except ValueError:
        return b"{}"


@st.composite
def kserve_infer(draw) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 infer body (JSON, or JSON header + binary tail) with lying shapes, datatypes and
    ``binary_data_size``; returns (body, extra headers) — the header length may lie too."""
    tensors, tail = [], b""
    for _ in range(draw(S.integers(0, 4))):
        shape = draw(S.lists(S.one_of(S.integers(-2, 6), S.sampled_from([2**31, 2**40, 2**63 - 1])), max_size=4))
        tensor = {"name": draw(S.one_of(S.sampled_from(INPUT_NAMES), S.text(max_size=10))), "shape": shape,
                  "datatype": draw(S.sampled_from(TRITON_DATATYPES))}
        if draw(S.booleans()):
            actual = draw(S.integers(0, 64))
            claimed = draw(S.one_of(S.just(actual), S.integers(-5, 2**40), S.text(max_size=3)))
            tensor["parameters"] = {"binary_data_size": claimed}
            tail += os.urandom(actual) if draw(S.booleans()) else b"\0" * actual
        else:
            tensor["data"] = draw(S.one_of(S.lists(S.integers(-(2**40), 2**40), max_size=8),
                                            S.lists(S.text(max_size=8), max_size=4), json_values))
        tensors.append(tensor)
    body = {"inputs": tensors}
    if draw(S.booleans()):
        body["outputs"] = [{"name": draw(S.text(max_size=10)), "parameters": {"binary_data": draw(S.booleans())}}]
    if draw(S.booleans()):
        body["parameters"] = draw(S.dictionaries(S.sampled_from(["sequence_id", "sequence_start", "priority",
                                                                   "timeout", "binary_data_output"]),
                                                  _scalars, max_size=3))
    header = json.dumps(body).encode()
    headers = {}
    if tail or draw(S.booleans()):
        mode = draw(S.sampled_from(("exact", "short", "long", "negative", "text", "huge", "zero", "spaces")))
        value = {"exact": str(len(header)), "short": str(max(len(header) - draw(S.integers(1, 10)), 0)),
                 "long": str(len(header) + draw(S.integers(1, 100))), "negative": "-1", "text": "12a",
                 "huge": str(2**64), "zero": "0", "spaces": f" {len(header)} "}[mode]
        headers["Inference-Header-Content-Length"] = value
    return header + tail, headers


@functools.lru_cache(maxsize=None)
def _bomb(kind: str) -> bytes:
    """Small compressed bodies that inflate to 64 MiB (zeros, or nesting that Triton would parse)."""
    payload = b"[" * (64 << 20) if kind.endswith("nested") else b"\0" * (64 << 20)
    if kind.startswith("gzip"):
        return gzip.compress(payload, compresslevel=9)
    return zlib.compress(payload, 9)


# ---- audio containers ------------------------------------------------------------------------------------------

def _wav_header(channels: int, rate: int, bits: int, fmt: int, data_size: int, riff_size: int | None = None) -> bytes:
    block = max(channels * bits // 8, 0) & 0xFFFF
    fmt_chunk = struct.pack("<HHIIHH", fmt & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                            (rate * block) & 0xFFFFFFFF, block, bits & 0xFFFF)
    riff = riff_size if riff_size is not None else 36 + data_size
    return (b"RIFF" + struct.pack("<I", riff & 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", 16) + fmt_chunk
            + b"data" + struct.pack("<I", data_size & 0xFFFFFFFF))


def _flac_streaminfo(rate: int, channels: int, bits: int, total_samples: int, last: bool = True) -> bytes:
    """``fLaC`` + a STREAMINFO block that claims what it likes (rate 20 bits, channels 3, bits 5, samples 36)."""
    packed = ((rate & 0xFFFFF) << 44) | (((channels - 1) & 0x7) << 41) | (((bits - 1) & 0x1F) << 36) | (total_samples & (2**36 - 1))
    info = struct.pack(">HH", 4096, 4096) + b"\0\0\x10" + b"\0\0\x10" + packed.to_bytes(8, "big") + b"\0" * 16
    return b"fLaC" + bytes([0x80 if last else 0]) + len(info).to_bytes(3, "big") + info


@functools.lru_cache(maxsize=None)
def real_audio(fmt: str, seconds: float, rate: int = 16000, channels: int = 1, silence: bool = False) -> bytes:
    import soundfile

    frames = int(seconds * rate)
    if silence:
        wave = np.zeros((frames, channels), np.float32)
    else:
        t = np.arange(frames, dtype=np.float32) / rate
        wave = np.repeat((0.3 * np.sin(2 * np.pi * 220 * t))[:, None], channels, axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


SDP = (b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=fuzz\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
M3U8 = (b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.wav\n#EXTINF:10,\n"
        b"file:///etc/passwd\n#EXT-X-ENDLIST\n")
FFCONCAT = b"ffconcat version 1.0\nfile '/etc/passwd'\n"


@st.composite
def hostile_audio(draw) -> bytes:
    kind = draw(S.sampled_from(("wav_lying", "wav_real", "wav_truncated", "flac_lying", "flac_truncated", "flac_real",
                                 "flac_silence", "sdp", "m3u8", "ffconcat", "ogg", "mp3", "random", "empty")))
    if kind == "wav_lying":
        header = _wav_header(draw(S.sampled_from([0, 1, 2, 8, 65535])), draw(S.sampled_from([0, 1, 8000, 16000, 2**31, 2**32 - 1])),
                             draw(S.sampled_from([0, 8, 16, 24, 32, 64, 7])), draw(S.sampled_from([1, 3, 0xFFFE, 0, 85])),
                             draw(S.sampled_from([0, 1, 2**31, 2**32 - 1])), draw(S.sampled_from([None, 0, 2**32 - 1])))
        return header + draw(S.binary(max_size=256))
    if kind in ("wav_real", "wav_truncated"):
        data = real_audio("WAV", draw(S.sampled_from([0.05, 0.5, 2.0, 12.0])), draw(S.sampled_from([8000, 16000, 48000])),
                          draw(S.sampled_from([1, 2])))
        return data if kind == "wav_real" else data[: draw(S.integers(0, len(data)))]
    if kind == "flac_lying":
        info = _flac_streaminfo(draw(S.sampled_from([1, 8000, 48000, 655350, 0])), draw(S.integers(1, 8)),
                                draw(S.sampled_from([4, 16, 24, 32])),
                                draw(S.sampled_from([0, 48000 * 36000, 2**36 - 1])))
        return info + draw(S.binary(max_size=200))
    if kind in ("flac_real", "flac_truncated"):
        data = real_audio("FLAC", draw(S.sampled_from([0.5, 2.0])), 16000, 1)
        return data if kind == "flac_real" else data[: draw(S.integers(0, len(data)))]
    if kind == "flac_silence":  # long silence compresses to a few kB: duration beyond the limit, small upload
        return real_audio("FLAC", draw(S.sampled_from([30.0, 300.0])), 48000, 2, silence=True)
    if kind == "sdp":
        return SDP
    if kind == "m3u8":
        return M3U8
    if kind == "ffconcat":
        return FFCONCAT
    if kind == "ogg":
        return b"OggS\0\x02" + b"\0" * 20 + draw(S.binary(max_size=100))
    if kind == "mp3":
        return b"ID3\x04\0\0\x7f\x7f\x7f\x7f" + b"\xff\xfb\x90\x64" * draw(S.integers(0, 50))
    if kind == "random":
        return draw(S.binary(max_size=512))
    return b""


# ---- HTTP framing ----------------------------------------------------------------------------------------------

_header_names = S.sampled_from(("Content-Type", "Content-Length", "Transfer-Encoding", "Content-Encoding",
                                 "Inference-Header-Content-Length", "Authorization", "Expect", "Origin", "Host",
                                 "Connection", "Accept-Encoding", "X-Forwarded-For", "Cookie", "Range",
                                 "Sec-WebSocket-Key", "Upgrade", "stepaudio-admin-key"))
_header_values = S.one_of(S.text(S.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                           S.sampled_from(["gzip", "chunked", "100-continue", "application/json", "0", "-1",
                                            "99999999999999999999", "identity, gzip", "websocket"]),
                           _rare(S.just("a"), _LONG_VALUE, 10))


def _path_mutation(draw, path: str) -> str:
    how = draw(S.sampled_from(("none", "none", "none", "percent", "double_slash", "dots", "nul", "long", "query",
                                "trailing_slash", "case")))
    if how == "percent":
        return "".join(f"%{ord(c):02X}" if c.isalpha() and draw(S.booleans()) else c for c in path)
    if how == "double_slash":
        return path.replace("/", "//", 1)
    if how == "dots":
        return path + "/../../v2/repository/index"
    if how == "nul":
        return path + "%00.json"
    if how == "long":
        return path + "/" + "a" * draw(S.sampled_from([300, 8000, 70_000]))
    if how == "query":
        return path + "?" + "&".join(f"k{i}=%FF%00" for i in range(draw(S.integers(1, 50))))
    if how == "trailing_slash":
        return path + "/"
    if how == "case":
        return path.upper()
    return path


def framed(draw, method: str, target: str, headers: list[tuple[str, str]], body: bytes, surface: str, kind: str,
           hostile_headers: bool = True) -> FuzzRequest:
    """The request line, headers and body, with the framing drawn: honest (Content-Length or chunked) most of the
    time, else lying lengths, duplicate lengths, bad chunk sizes, CL + TE together."""
    framing = draw(S.sampled_from(("length",) * 8 + ("chunked", "chunked", "none", "lying_short", "lying_long",
                                                      "duplicate_length", "bad_chunk", "length_and_chunked",
                                                      "bad_request_line")))
    headers = [("Host", "127.0.0.1"), *headers]
    if hostile_headers and draw(S.integers(0, 4)) == 0:
        headers += draw(S.lists(S.tuples(_header_names, _header_values), max_size=4))
    well_framed = framing in ("length", "chunked", "none")
    if framing == "none" and body:
        well_framed = False
    if any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
        well_framed = False  # the drawn extra headers already broke the framing
    if any(any(c in value for c in "\r\n\0") or len(value) > 8000 for _, value in headers):
        well_framed = False
    encoded = body
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "lying_short":
        headers.append(("Content-Length", str(max(len(body) - draw(S.integers(1, 64)), 0))))
    elif framing == "lying_long":
        headers.append(("Content-Length", str(len(body) + draw(S.sampled_from([1, 100, 2**31, 2**63])))))
    elif framing == "duplicate_length":
        headers += [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 1))]
    elif framing in ("chunked", "bad_chunk", "length_and_chunked"):
        headers.append(("Transfer-Encoding", "chunked"))
        if framing == "length_and_chunked":
            headers.append(("Content-Length", str(len(body))))
        encoded = _chunked(body, max(draw(S.integers(1, 4096)), len(body) // 64))
        if framing == "bad_chunk":
            bad = draw(S.sampled_from((b"-1\r\n", b"fffffffffffffffffff\r\n", b"zz\r\n", b"5;" + b"e" * 9000 + b"\r\n",
                                        b"10\n", b"0x10\r\n", b"7fffffff\r\nabc")))
            encoded = bad + encoded
    names = [name.lower() for name, _ in headers]
    strict = (method in METHODS and len(target) < 8000 and len(names) == len(set(names))
              and all(len(value) < 8000 for _, value in headers)
              and all(value.lower() == "100-continue" for name, value in headers if name.lower() == "expect"))
    line = f"{method} {target} HTTP/1.1"
    if framing == "bad_request_line":
        line = draw(S.sampled_from((f"{method}  {target} HTTP/1.1", f"{method} {target} HTTP/9.9", f"{method} {target}",
                                     f"{method} {target} HTTP/1.1 extra", f"{method}\t{target} HTTP/1.1")))
    head = line + "\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    raw = head.encode("utf-8", "surrogateescape") + encoded
    return FuzzRequest(surface, kind, raw, well_framed, strict=strict, method=method.upper() if method.isascii() else method)


def _chunked(body: bytes, size: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


_methods = S.one_of(S.sampled_from(METHODS), S.sampled_from(METHODS), S.sampled_from(METHODS),
                     S.from_regex(r"\A[A-Z0-9]{1,40}\Z"), S.sampled_from(["M00001" + "A" * 200, "GET\x00", "CONNECT"]))


# ---- the guard -------------------------------------------------------------------------------------------------

@st.composite
def guard_request(draw) -> FuzzRequest:
    family = draw(_weighted((300, S.just("model")), (60, S.just("endpoint")), (20, S.just("encoding")),
                            (40, S.just("random_body")), (1, S.just("big_body"))))
    headers: list[tuple[str, str]] = []
    if family in ("model", "encoding", "random_body", "big_body"):
        model = draw(S.one_of(S.sampled_from(PUBLIC_MODELS), S.sampled_from(INTERNAL_MODELS),
                               S.text(S.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"),
                                       min_size=1, max_size=20)))
        action = draw(S.sampled_from(MODEL_ACTIONS))
        version = draw(S.sampled_from(("", "", "", "/versions/1", "/versions/-1", "/versions/99999999999999999999")))
        path = f"/v2/models/{model}{version}" + (f"/{action}" if action else "")
        method = draw(S.one_of(S.just("POST"), S.just("POST"), _methods))
    else:
        path, method, action = draw(S.sampled_from(GUARD_PATHS)), draw(_methods), ""
    path = _path_mutation(draw, path)
    if family == "big_body":
        size = draw(S.sampled_from([1 << 20, 15 << 20, (16 << 20) + 1]))
        shape = draw(S.sampled_from((b"[", b'"\\', b" ", b'{"a":')))
        body, kind = shape * (size // len(shape)), f"big_body {shape.decode()}"
    elif family == "encoding":
        which = draw(S.sampled_from(("gzip", "gzip_nested", "deflate", "deflate_nested", "garbage")))
        body = _bomb(which) if which != "garbage" else draw(S.binary(max_size=200))
        encoding = draw(S.sampled_from(("gzip", "deflate", "br", "identity", "gzip, gzip", "x-unknown")))
        headers += [("Content-Encoding", encoding)]
        if draw(S.booleans()):
            headers += [("Content-Encoding", "identity")]
        kind = f"content_encoding {which}"
    elif family == "random_body":
        body, kind = draw(S.binary(max_size=1024)), "random_body"
    elif action == "infer":
        choice = draw(S.sampled_from(("kserve", "kserve", "json")))
        if choice == "kserve":
            body, extra = draw(kserve_infer())
            headers += list(extra.items())
            kind = "kserve_infer"
        else:
            body, kind = draw(hostile_json()), "hostile_json"
    elif action in ("generate", "generate_stream"):
        body, kind = (draw(generate_body()), "generate") if draw(S.booleans()) else (draw(hostile_json()), "hostile_json")
    else:
        body, kind = (b"", "endpoint") if draw(S.booleans()) else (draw(hostile_json()), "hostile_json")
    if draw(S.integers(0, 3)) == 0:  # the generate endpoints parse the whole body whatever this header says
        value = draw(S.sampled_from(("0", "1", "-1", str(len(body)), "abc", "")))
        headers.append(("Inference-Header-Content-Length", value))
        if draw(S.booleans()):
            headers.append(("Inference-Header-Content-Length", draw(S.sampled_from(("0", str(len(body)), "5")))))
        kind += " +header_length"
    if body:
        headers.append(("Content-Type", draw(S.sampled_from(("application/json", "application/octet-stream",
                                                              "text/plain", "multipart/form-data")))))
    return framed(draw, method, path, headers, body, "guard", kind)


# ---- the gateway -----------------------------------------------------------------------------------------------

def authorization(draw, api_key: str) -> list[tuple[str, str]]:
    choice = draw(S.sampled_from(("valid",) * 6 + ("wrong", "none", "scheme", "empty", "basic", "long", "two")))
    return {"valid": [("Authorization", f"Bearer {api_key}")], "wrong": [("Authorization", "Bearer not-the-key")],
            "none": [], "scheme": [("Authorization", api_key)], "empty": [("Authorization", "Bearer ")],
            "basic": [("Authorization", "Basic " + base64.b64encode(b"a:" + api_key.encode()).decode())],
            "long": [("Authorization", "Bearer " + "k" * 7000)],
            "two": [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {api_key}")]}[choice]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def speech_body(draw) -> bytes:
    body = {"model": draw(S.one_of(S.sampled_from(SPEECH_MODELS), json_values)),
            "input": draw(S.one_of(S.sampled_from(["你好。", "hi", "(RAP)哟哟", "(高兴1)好", " "]), S.text(max_size=300),
                                    json_values)),
            "voice": draw(S.one_of(S.sampled_from(["Tingting", "voice_0", "voice_" + "f" * 32, "../x"]),
                                    S.fixed_dictionaries({"id": S.one_of(S.text(max_size=10), json_values)}),
                                    json_values))}
    optional = {"instructions": S.one_of(S.sampled_from(["高兴1, 四川话", "(RAP)", "nope", "(RAP)(哼唱)"]), json_values),
                "response_format": S.one_of(S.sampled_from(["mp3", "wav", "pcm", "flac", "opus", "aac", "xx"]), json_values),
                "speed": S.one_of(S.floats(), S.sampled_from([0.25, 1.0, 4.0, 0.1, 100.0]), json_values),
                "stream_format": S.sampled_from(["audio", "sse", "x"]),
                "seed": S.one_of(S.integers(-5, 2**64), json_values),
                "max_new_tokens": S.one_of(S.integers(1, 8), S.sampled_from([0, -1, 10**9, 2**63]), json_values),
                "temperature": S.one_of(S.floats(), json_values), "top_p": S.floats(),
                "extra_field": json_values}
    for name, strategy in optional.items():
        if draw(S.integers(0, 2)) == 0:
            body[name] = draw(strategy)
    if body.get("max_new_tokens") is None or not isinstance(body.get("max_new_tokens"), int):
        body["max_new_tokens"] = draw(S.integers(1, 8))  # bounded work when the request is valid
    try:
        return json.dumps(body).encode()
    except ValueError:
        return b"{}"


@st.composite
def chat_body(draw) -> bytes:
    audio_part = {"type": "input_audio",
                  "input_audio": draw(S.one_of(
                      S.fixed_dictionaries({"data": S.builds(_b64, hostile_audio()),
                                             "format": S.sampled_from(["wav", "mp3", "flac", "x"])}),
                      S.just("x"), S.fixed_dictionaries({"data": S.just(5)}),
                      S.fixed_dictionaries({"data": S.text(max_size=20)}), json_values))}
    content = draw(S.one_of(S.text(max_size=100), S.lists(S.one_of(
        S.fixed_dictionaries({"type": S.just("text"), "text": S.one_of(S.text(max_size=50), json_values)}),
        S.just(audio_part), S.fixed_dictionaries({"type": S.text(max_size=10)}), json_values), max_size=3), json_values))
    message = {"role": draw(S.sampled_from(["user", "system", "assistant", "tool", "x"])), "content": content}
    if message["role"] == "assistant" and draw(S.booleans()):
        message["audio"] = draw(S.one_of(S.just("x"), S.fixed_dictionaries({"id": S.text(max_size=10)}), json_values))
    messages = [message] * draw(S.integers(0, 3))
    body = {"model": draw(S.one_of(S.sampled_from(CHAT_MODELS), json_values)), "messages": messages}
    if draw(S.booleans()):
        body["modalities"] = draw(S.one_of(S.just(["text", "audio"]), S.just(["text"]), json_values))
        body["audio"] = draw(S.one_of(S.fixed_dictionaries({"voice": S.one_of(S.just("Tingting"), json_values,
                                                                                  S.fixed_dictionaries({"id": json_values})),
                                                              "format": S.sampled_from(["wav", "pcm16", "mp3", "x"])}),
                                       json_values))
    for name in ("stream", "max_tokens", "max_completion_tokens", "seed", "temperature"):
        if draw(S.integers(0, 3)) == 0:
            body[name] = draw(json_values)
    body.setdefault("max_tokens", 4)
    try:
        return json.dumps(body).encode()
    except ValueError:
        return b"{}"


@st.composite
def multipart_body(draw) -> tuple[bytes, str]:
    """A voice upload (``file`` + ``transcript``) with a hostile container, lying boundaries, many parts."""
    boundary = draw(S.sampled_from(["fuzzboundary", "x" * 70, "b", "a\"b", "--"]))
    declared = draw(S.sampled_from([boundary, boundary, boundary, "other", "", boundary + "; charset=x"]))
    parts = []
    filename = draw(S.sampled_from(["a.wav", "../../etc/passwd", "a.sdp", "x" * 300, "a\"b.flac", "é.m3u8"]))
    parts.append((f'form-data; name="file"; filename="{filename}"', draw(hostile_audio())))
    if draw(S.integers(0, 4)):
        parts.append(('form-data; name="transcript"', draw(S.one_of(S.just("你好"), S.text(max_size=300))).encode()))
    if draw(S.integers(0, 5)) == 0:
        parts += [(f'form-data; name="f{i}"', b"v") for i in range(draw(S.sampled_from([2, 9, 1000])))]
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n"
                    + data + b"\r\n" for disposition, data in parts)
    if draw(S.integers(0, 5)):
        body += b"--" + boundary.encode() + b"--\r\n"
    return body, f"multipart/form-data; boundary={declared}"


@st.composite
def gateway_request(draw, api_key: str) -> FuzzRequest:
    family = draw(S.sampled_from(("speech", "speech", "chat", "chat", "voices", "voices", "other", "json_any")))
    headers = authorization(draw, api_key)
    if family == "speech":
        path, method, body, kind = "/v1/audio/speech", "POST", draw(speech_body()), "speech"
        headers.append(("Content-Type", "application/json"))
    elif family == "chat":
        path, method, body, kind = "/v1/chat/completions", "POST", draw(chat_body()), "chat"
        headers.append(("Content-Type", "application/json"))
    elif family == "voices":
        body, content_type = draw(multipart_body())
        path, method, kind = "/v1/audio/voices", "POST", "voice_upload"
        headers.append(("Content-Type", content_type))
    elif family == "json_any":
        path = draw(S.sampled_from(("/v1/audio/speech", "/v1/chat/completions", "/v1/audio/voices")))
        method, body, kind = "POST", draw(hostile_json()), "hostile_json"
        headers.append(("Content-Type", draw(S.sampled_from(("application/json", "text/plain", "")))))
    else:
        path, method, body, kind = draw(S.sampled_from(GATEWAY_PATHS)), draw(_methods), b"", "route"
    path = _path_mutation(draw, path)
    if draw(S.integers(0, 10)) == 0:
        headers.append(("Origin", draw(S.sampled_from(("http://evil.example", "null", "http://127.0.0.1")))))
    return framed(draw, method, path, headers, body, "gateway", kind)


# ---- /v1/realtime ----------------------------------------------------------------------------------------------

def _pcm(samples: int) -> str:
    return _b64((np.sin(np.arange(samples) / 7.0) * 8000).astype("<i2").tobytes())


_BIG_AUDIO = st.just(_pcm(600_000))  # 37 s of 16 kHz audio in one event: over the message limit


@st.composite
def realtime_event(draw) -> str | bytes:
    kind = draw(S.sampled_from(("update", "append", "append", "close", "unknown", "not_json", "binary", "nested", "any")))
    if kind == "update":
        session = draw(S.dictionaries(S.sampled_from(["sample_rate", "input_audio_format", "voice", "seed", "speculation",
                                                        "max_response_output_tokens", "max_speech_tokens", "x"]),
                                       S.one_of(S.sampled_from([16000, 8000, 48000, 7999, 0, "pcm16", "Tingting",
                                                                  "voice_x", 2**63, 1, 256]), json_values), max_size=4))
        return json.dumps({"type": "session.update", "session": draw(S.one_of(S.just(session), json_values))})
    if kind == "append":
        audio = draw(S.one_of(S.builds(_pcm, S.integers(0, 16000)), S.just("not base64!"), S.just("QQ=="),
                               S.just(_b64(b"\0")), json_values,
                               _rare(S.just(""), _BIG_AUDIO, 30)))
        return json.dumps({"type": "input_audio_buffer.append", "audio": audio})
    if kind == "close":
        return json.dumps({"type": "session.close"})
    if kind == "unknown":
        return json.dumps({"type": draw(S.text(max_size=30))})
    if kind == "not_json":
        return draw(S.text(max_size=200))
    if kind == "binary":
        return draw(S.binary(max_size=500))
    if kind == "nested":
        depth = draw(_depths)
        return '{"type":"session.update","session":' + "[" * depth + "]" * depth + "}"
    return json.dumps(draw(json_values))


def _ws_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv: int = 0,
              claimed: int | None = None) -> bytes:
    length = len(payload) if claimed is None else claimed
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 1 << 16:
        head = bytes([first, mask_bit | 126]) + struct.pack(">H", length)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack(">Q", length)
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@st.composite
def realtime_raw(draw, api_key: str) -> FuzzRequest:
    """A real handshake followed by malformed frames (bad opcodes, reserved bits, unmasked, lying lengths,
    oversized or fragmented control frames, invalid UTF-8, bad close codes)."""
    auth = authorization(draw, api_key)
    head = ("GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in auth) + "\r\n").encode()
    frames = []
    for _ in range(draw(S.integers(1, 4))):
        which = draw(S.sampled_from(("bad_opcode", "rsv", "unmasked", "lying_length", "huge_length", "big_ping",
                                      "fragmented_ping", "continuation", "bad_utf8", "bad_close", "good_text")))
        if which == "bad_opcode":
            frames.append(_ws_frame(draw(S.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xF])), b"x"))
        elif which == "rsv":
            frames.append(_ws_frame(1, b'{"type":"session.close"}', rsv=draw(S.integers(1, 7))))
        elif which == "unmasked":
            frames.append(_ws_frame(1, b'{"type":"session.close"}', masked=False))
        elif which == "lying_length":
            frames.append(_ws_frame(1, b'{"type":', claimed=draw(S.integers(9, 5000))))
        elif which == "huge_length":
            frames.append(_ws_frame(2, b"", claimed=draw(S.sampled_from([2**31, 2**63 - 1]))))
        elif which == "big_ping":
            frames.append(_ws_frame(9, b"p" * 200))
        elif which == "fragmented_ping":
            frames.append(_ws_frame(9, b"p", fin=False))
        elif which == "continuation":
            frames.append(_ws_frame(0, b"tail"))
        elif which == "bad_utf8":
            frames.append(_ws_frame(1, b'{"type":"\xff\xfe"}'))
        elif which == "bad_close":
            frames.append(_ws_frame(8, draw(S.sampled_from([b"\x00", b"\x03\xe7", b"\x0b\xb8", b"\x03\xe8\xff"]))))
        else:
            frames.append(_ws_frame(1, json.dumps({"type": "session.update", "session": {}}).encode()))
    return FuzzRequest("realtime", "raw_frames", head + b"".join(frames), well_framed=False, method="GET")


@st.composite
def realtime_session(draw, api_key: str) -> FuzzRequest:
    headers = authorization(draw, api_key)
    if draw(S.integers(0, 8)) == 0:
        headers = [("Sec-WebSocket-Protocol", draw(S.sampled_from([f"openai-insecure-api-key.{api_key}",
                                                                    "openai-insecure-api-key.wrong", "x" * 300])))]
    if draw(S.integers(0, 8)) == 0:
        headers.append(("Origin", "http://evil.example"))
    messages = draw(S.lists(realtime_event(), min_size=0, max_size=5))
    return FuzzRequest("realtime", "session", ws_headers=tuple(headers), ws_messages=tuple(messages))


def requests(api_key: str, weights: tuple[int, int, int, int] = (48, 48, 2, 2)):
    """Every family against every surface; ``weights`` = guard, gateway HTTP, realtime sessions, raw realtime
    frames (sessions are slow: each waits for what the server says)."""
    guard, gateway, sessions, raw = weights
    return _weighted((guard, guard_request()), (gateway, gateway_request(api_key)),
                     (sessions, realtime_session(api_key)), (raw, realtime_raw(api_key)))

"""AudioTokenizer on speech: token rates and id ranges, any input rate, trimming, streaming = one-shot."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.audio import resample
from stepaudio.tokenizer import AudioTokenizer, TokenizedAudio


def check_structure(result: TokenizedAudio, seconds: float):
    assert abs(len(result.vq02) - seconds * 1000 / 60) <= 2  # one code per 60 ms
    assert abs(len(result.vq06) - seconds * 25) <= 2  # one code per 40 ms
    assert all(0 <= c < 1024 for c in result.vq02) and all(0 <= c < 4096 for c in result.vq06)
    groups = min(len(result.vq02) // 2, len(result.vq06) // 3)
    assert len(result.ids) == 5 * groups
    assert abs(len(result.ids) - seconds * 125 / 3) <= 5  # 41.67 ids per second
    for g in range(groups):
        block = result.ids[5 * g : 5 * g + 5]
        assert block[:2] == [65536 + c for c in result.vq02[2 * g : 2 * g + 2]]
        assert block[2:] == [66560 + c for c in result.vq06[3 * g : 3 * g + 3]]


def test_speech_gives_the_published_token_rates(onnx_tokenizer, english):
    wave, rate = english
    result = onnx_tokenizer.tokenize(wave, rate)
    check_structure(result, len(wave) / rate)
    assert len(set(result.vq02)) > 5 and len(set(result.vq06)) > 3  # codes follow the audio


def test_onnx_and_torch_backends_give_the_same_codes(onnx_tokenizer, torch_tokenizer, english):
    wave, rate = english
    assert onnx_tokenizer.tokenize(wave, rate) == torch_tokenizer.tokenize(wave, rate)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_other_rates_and_stereo_tokenize(onnx_tokenizer, english, rate):
    wave, source_rate = english
    up = resample(wave, source_rate, rate)
    stereo = np.stack([up, 0.5 * up])
    result = onnx_tokenizer.tokenize(stereo, rate)
    check_structure(result, up.shape[0] / rate)
    reference = onnx_tokenizer.tokenize(wave, source_rate)
    # band-limited resampling round trip: nearly all codes survive
    assert np.mean(np.array(result.vq02[:50]) == np.array(reference.vq02[:50])) > 0.7


def test_8khz_input_is_upsampled_and_tokenized(onnx_tokenizer, chinese_8k):
    wave, rate = chinese_8k
    assert rate == 8000
    check_structure(onnx_tokenizer.tokenize(wave, rate), len(wave) / rate)


def test_trim_gives_prompt_length_tokens(onnx_tokenizer, english):
    wave, rate = english
    padded = np.concatenate([np.zeros(rate, np.float32), wave, np.zeros(rate, np.float32)])
    trimmed = onnx_tokenizer.tokenize(padded, rate, trim=True)
    untrimmed = onnx_tokenizer.tokenize(padded, rate)
    assert len(trimmed.vq06) < len(untrimmed.vq06) - 40  # about 2 s of added silence removed
    assert len(trimmed.vq06) <= len(onnx_tokenizer.tokenize(wave, rate).vq06) + 10


def stream_in_pieces(tokenizer: AudioTokenizer, wave, rate, sizes) -> tuple[list[int], list[list[int]], object]:
    stream, ids, emitted, start, i = tokenizer.stream(rate), [], [], 0, 0
    while start < wave.shape[-1]:
        size = sizes[i % len(sizes)]
        new = stream.feed(wave[..., start : start + size])
        emitted.append(new)
        ids += new
        start, i = start + size, i + 1
    ids += stream.finish()
    return ids, emitted, stream


@pytest.mark.parametrize("rate,sizes", [(16000, [3840]), (16000, [1, 999, 4001, 37]), (44100, [10584]), (48000, [700, 13])])
def test_streaming_equals_one_shot(onnx_tokenizer, english, rate, sizes):
    wave, source_rate = english
    wave = resample(wave, source_rate, rate)[: rate * 2]
    if rate == 48000:
        wave = np.stack([wave, -wave * 0.3])
    one_shot = onnx_tokenizer.tokenize(wave, rate, energy_norm=False)
    ids, _, stream = stream_in_pieces(onnx_tokenizer, wave, rate, sizes)
    assert ids == one_shot.ids
    assert (stream.vq02, stream.vq06) == (one_shot.vq02, one_shot.vq06)


def test_streamed_ids_arrive_at_segment_boundaries(tokenizer_dir, english):
    wave, rate = english
    tokenizer = AudioTokenizer.from_checkpoint(tokenizer_dir, backend="onnx", vq06_segment_seconds=1.0)
    ids, emitted, stream = stream_in_pieces(tokenizer, wave, rate, [3840])
    assert ids == tokenizer.tokenize(wave, rate, energy_norm=False).ids
    # vq02 codes are final every 240 ms; vq06 (and so ids) only when a 1 s segment completes: 25 groups of 5 ids
    first = next(i for i, new in enumerate(emitted) if new)
    assert (first + 1) * 3840 >= 16000 and len(emitted[first]) == 5 * (25 // 3)
    assert len(stream.vq02) >= 3 * 8  # three seconds of chunks before finish()


def test_default_30s_segments_hold_ids_until_finish(onnx_tokenizer, english):
    wave, rate = english
    _, emitted, _ = stream_in_pieces(onnx_tokenizer, wave, rate, [3840])
    assert all(new == [] for new in emitted)


def test_bad_audio_is_rejected(onnx_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        onnx_tokenizer.tokenize(np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="NaN"):
        onnx_tokenizer.tokenize(np.full(1600, np.nan, np.float32), 16000)
    with pytest.raises(ValueError, match="limit"):
        onnx_tokenizer.tokenize(np.zeros(8000 * 61, np.float32), 8000)
    stream = onnx_tokenizer.stream(16000)
    with pytest.raises(ValueError, match="floating point"):
        stream.feed(np.zeros(100, np.int16))
    assert stream.feed(np.zeros(0, np.float32)) == []
    stream.finish()
    with pytest.raises(ValueError, match="finished"):
        stream.finish()


def test_missing_onnx_export_says_how_to_make_it(tokenizer_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="export.tokenizer_onnx"):
        AudioTokenizer.from_checkpoint(tokenizer_dir, backend="onnx", vq02_onnx=tmp_path / "absent.onnx")
    with pytest.raises(ValueError, match="backend"):
        AudioTokenizer.from_checkpoint(tokenizer_dir, backend="tensorrt")

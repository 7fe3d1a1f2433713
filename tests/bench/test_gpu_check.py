"""bench/gpu_check.py --dry-run: the GPU check's code at tiny sizes on the CPU, so the day a GPU is lent it runs."""

from __future__ import annotations

import json

import pytest

from bench import gpu_check


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_dry_run_measures_every_part_and_writes_one_json(dry_report):
    assert dry_report["dry_run"] is True
    assert [r["batch"] for r in dry_report["llm_decode"]] == [1, 2]
    for row in dry_report["llm_decode"]:
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * row["steps"] / row["seconds"])
    t2w = dry_report["token2wav"]
    assert t2w["speech_seconds"] == pytest.approx(2.0, abs=0.05)  # the requested 2 s of target speech came out
    assert t2w["seconds_per_10s"] == pytest.approx((t2w["flow_s"] + t2w["vocoder_s"]) * 10 / t2w["speech_seconds"])
    assert [r["streams"] for r in dry_report["streaming"]] == [1, 2]
    for row in dry_report["streaming"]:
        assert len(row["first_audio_s"]) == row["streams"] and 0 < row["mean_s"] <= row["max_s"]
        # the served schedule: the first chunk needs its 25 ids plus the 20 lookahead ids
        assert row["ids_to_first_chunk"] == 45 and row["first_chunk_seconds"] > 0


def test_the_real_sizes_are_the_published_ones():
    assert gpu_check.TTS_3B.num_hidden_layers == 32 and gpu_check.TTS_3B.hidden_size == 3072
    model = gpu_check.build_llm(gpu_check.TINY_LLM, "cpu", gpu_check.torch.bfloat16)
    assert next(model.parameters()).dtype == gpu_check.torch.bfloat16  # built in the target dtype, no fp32 copy
    shapes = {"hidden": 3072, "intermediate": 8192, "heads": 48, "groups": 4, "layers": 32}
    from export.placement import LLMShape

    params = LLMShape("tts", **shapes, vocab=74752, max_seq_len=32768).parameters
    assert abs(params * 2 - 7.06e9) < 0.01e9  # the size the check builds is the published 7.06 GB shard


def test_without_cuda_the_real_check_says_so(capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("CUDA is here")
    assert gpu_check.main(["--out", "/dev/null"]) == 2
    assert "no CUDA device" in capsys.readouterr().err

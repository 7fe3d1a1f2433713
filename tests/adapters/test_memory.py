"""``IdleTrim``: the heap is trimmed when the last request in flight ends, at most once per interval."""

from stepaudio_triton.memory import IdleTrim, _malloc_trim


def test_trims_only_when_the_last_request_ends_and_not_too_often():
    calls = []
    trim = IdleTrim(min_interval_s=3600)
    trim._trim = calls.append
    with trim:
        with trim:
            pass
        assert calls == [], "a request is still in flight"
    assert calls == [0] and trim.trims == 1
    with trim:
        pass
    assert calls == [0], "within the interval"
    trim.min_interval_s = 0
    with trim:
        pass
    assert calls == [0, 0]


def test_glibc_trim_is_found_here():
    assert _malloc_trim() is not None  # these machines run glibc; elsewhere IdleTrim does nothing

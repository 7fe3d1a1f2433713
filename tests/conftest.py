"""Session fixtures shared by the live-server tests (``tests/server``) and the gateway tests (``tests/gateway``):
one tiny checkpoint tree, one rendered repository and one tritonserver for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stepaudio_server.http_guard import GuardLimits
from stepaudio_server.launcher import TritonServer
from tests.helpers import sigterm_interrupts

# A long batching window (decoders too): the tests send concurrent requests at once and check that they batch; small
# LLM batches keep CPU memory low.
# A BLS stream on a killed stub is abandoned after 30 s, not the production 60 (the fault-injection test waits for it).
# Real-time sessions: a short idle timeout (the abandoned-session tests wait for it), a short keep-alive (a test waits
# for one) and short vq06 segments
# (streamed ids leave during the audio, not only at END).
TEST_RENDER_VALUES = {"batch_queue_delay_us": "100000", "decoder_queue_delay_us": "100000",
                      "chat_max_context_tokens": "2000", "bls_stall_timeout_s": "30",
                      "realtime_idle_timeout_s": "4", "realtime_keepalive_s": "1", "stream_vq06_segment_seconds": "1.2",
                      # The float32 graph the parity tests compare against; the bf16 flow has its own server (test_flow_bf16).
                      "decoder_flow_dtype": "float32"}


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """The whole tiny checkpoint tree in the published layout, written once per session."""
    from stepaudio.checkpoints import write_tree

    root = tmp_path_factory.mktemp("checkpoints")
    write_tree(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, tiny_checkpoints) -> Path:
    """Every served Step-Audio model rendered from the tiny checkpoints (one server for all their tests)."""
    from export.render_repository import render
    from stepaudio.checkpoints import layout

    if os.environ.get("STEPAUDIO_TEST_REPOSITORY"):  # development: reuse a repository rendered with these values
        return Path(os.environ["STEPAUDIO_TEST_REPOSITORY"])
    repo = tmp_path_factory.mktemp("model_repository")
    render(tiny_checkpoints, repo, tiny_checkpoints / layout.SPEAKERS_DIR, TEST_RENDER_VALUES)
    return repo


def machine_facts() -> str:
    """CPUs, memory and /dev/shm of the machine the run was on."""
    import shutil

    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    shm = shutil.disk_usage("/dev/shm")
    return (f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {model}; {memory / 2**30:.1f} GiB; "
            f"/dev/shm {shm.free / 2**30:.1f} of {shm.total / 2**30:.1f} GiB free; {_cgroup_memory()}")


def _cgroup_memory() -> str:
    """The run's memory cgroup (v1 or v2): limit, peak and how many processes its OOM killer killed."""
    def read(*paths: str) -> str | None:
        for path in paths:
            try:
                return Path(path).read_text()
            except OSError:
                continue
        return None

    v1, v2 = "/sys/fs/cgroup/memory/", "/sys/fs/cgroup/"
    limit = read(v1 + "memory.limit_in_bytes", v2 + "memory.max")
    peak = read(v1 + "memory.max_usage_in_bytes", v2 + "memory.peak")
    events = read(v1 + "memory.oom_control", v2 + "memory.events") or ""
    kills = next((line.split()[1] for line in events.splitlines() if line.startswith("oom_kill ")), "?")

    def gib(text: str | None) -> str:
        value = (text or "").strip()
        if not value.isdigit():
            return value or "?"
        return "none" if int(value) >= 2**60 else f"{int(value) / 2**30:.1f} GiB"

    return f"memory cgroup limit {gib(limit)}, peak {gib(peak)}, OOM kills {kills}"


def pytest_terminal_summary(terminalreporter):
    """At the end of the run, where a CI log's tail keeps it: the machine, and every session-server restart."""
    terminalreporter.write_line(f"machine: {machine_facts()}")
    for line in _server_restarts:
        terminalreporter.write_line(line, red=True)


SERVER_START_TIMEOUT_S = 300  # a busy 2-core machine can take minutes to load every model
_session_servers: list[TritonServer] = []  # the running session server, for the healing hook below
_server_restarts: list[str] = []  # what each restart said, repeated in the run's summary


@pytest.fixture(scope="session")
def triton_server(model_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("server_log") / "server.log"
    # A small body limit, so the test of the limit sends 16 MiB, not the production 64.
    limits = GuardLimits(max_body_bytes=16 * 1024 * 1024)
    server = TritonServer(model_repository, log_path=log, guard_limits=limits)
    with sigterm_interrupts(), server.start(timeout=SERVER_START_TIMEOUT_S):
        _session_servers.append(server)
        try:
            yield server
        finally:
            _session_servers.remove(server)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A session server that died in an earlier test is started again (same ports) before the next test that
    uses it, as the launcher restarts it in production: the test it died in fails with its exit report
    (``tests.helpers.attach_log_tails``), the rest of the session is not lost with it."""
    if "triton_server" not in getattr(item, "fixturenames", ()):
        return
    for server in _session_servers:
        report = server.exit_report()
        if report:
            _server_restarts.append("\n  ".join([f"session tritonserver died before {item.nodeid}; restarted:", *report]))
            item.config.pluginmanager.get_plugin("terminalreporter").write_line(_server_restarts[-1], red=True)
            try:
                server.restart(timeout=SERVER_START_TIMEOUT_S)
            except BaseException:
                _session_servers.remove(server)  # one failed restart: the later tests fail fast, not 300 s each
                raise

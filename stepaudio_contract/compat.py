"""Every workaround for a defect of the Triton release we serve on, in one table, each with the upstream fix and the
first release that has it; ``TritonFeatures.for_version(v)`` says which of them a server of version ``v`` needs.

The renderer writes the version into every python model's config (``triton_version``, a render value; default
``DEFAULT_VERSION``, or the installed server's, ``installed_version``) and leaves out the tensors that exist only
for a workaround that version does not need (``specs.Tensor.only_for``); the adapters read the same parameter
(``stepaudio_triton.adapter.parse_config``) and take the native path where the workaround is not needed.

Versions are Triton server versions ("2.51"); NGC containers are named by date: 24.10 ships 2.51, 24.12 ships 2.53,
25.05 ships 2.58. ``fixed_in=None``: no upstream fix that we know of, needed on every version. ``checked`` records
what we could and could not confirm in the upstream sources (python_backend / server PRs, issues, release notes).
Pure data: no Triton, no torch, no numpy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata

# The server this project is built, tested and measured on (the nvidia-pytriton wheel's, and NGC 24.10's).
DEFAULT_VERSION = "2.51"
VERSION_PARAMETER = "triton_version"


@dataclass(frozen=True)
class Workaround:
    name: str
    why: str  # the defect, in one sentence
    what_we_do: str
    upstream_fix: str  # PR / issue / release note
    fixed_in: str | None  # first Triton server version with the fix; None: none known
    checked: str  # what we confirmed upstream, and what we could not


WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround(
        name="error_output",
        why="an error response after a stream's first response reaches a BLS caller without its stream id, so the "
            "caller's stub files it under no stream and waits forever",
        what_we_do="every decoupled model declares an ERROR output; a BLS caller's stream ends with the tagged "
                   "message in that output of a normal final response (adapter.send_error, bls.Stream)",
        upstream_fix="python_backend PR #398 (BLS decoupled ResponseIterator.cancel(), with the error response "
                     "fixes it needs; server test PR #8097)",
        fixed_in="2.58",
        checked="PR #398 opened 2025-03-24 and its server tests (PR #8097) merged the same day: confirmed. The "
                "release (25.05 = 2.58) is from our docs/hardening.md reading; not confirmed in release notes here.",
    ),
    Workaround(
        name="cancel_input",
        why="a BLS caller cannot cancel a decoupled request: ResponseIterator has no cancel()",
        what_we_do="the LLM models and tts_stream declare a CANCEL input; a BLS stream carries a secret cancel "
                   "token in its request id and bls.Stream.cancel sends CANCEL = token to the same model "
                   "(generation.LiveStreams)",
        upstream_fix="python_backend PR #398: ResponseIterator.cancel()",
        fixed_in="2.58",
        checked="PR #398's title and description (cancel() on the BLS decoupled response iterator): confirmed. "
                "First release as for error_output: not confirmed in release notes here.",
    ),
    Workaround(
        name="retired_iterators",
        why="a finished BLS response iterator's last owner can be the stub's table, erased by a thread without the "
            "GIL: the numpy arrays of its responses are freed without the GIL and the stub segfaults at random",
        what_we_do="bls.RetiredIterators keeps each finished iterator 30 s and drops it from a Python thread",
        upstream_fix="python_backend PR #390 'fix: Fix requested output deleting extra outputs' (holds the GIL when "
                     "deleting numpy arrays behind tensors)",
        fixed_in="2.53",
        checked="PR #390 merged 2024-12-11 with that root cause: confirmed. First release 24.12 (= 2.53) from "
                "docs/hardening.md; not confirmed in release notes here.",
    ),
    Workaround(
        name="requested_outputs_only",
        why="a decoupled response sender drops the outputs its request did not ask for with the GIL released "
            "(same numpy-without-GIL defect)",
        what_we_do="adapter.send puts only the requested outputs in a response and keeps them referenced until the "
                   "send returns",
        upstream_fix="python_backend PR #390 (same PR as retired_iterators)",
        fixed_in="2.53",
        checked="as retired_iterators: the PR title names this path.",
    ),
    Workaround(
        name="tagged_error_codes",
        why="a BLS caller gets every called model's error as INTERNAL, whatever code was sent; gRPC stream errors "
            "carry no code at all (a protocol limit, on every version)",
        what_we_do="a caller that asks (BLS request id prefix, request parameter) gets the code as a [NAME] prefix "
                   "of the message (stepaudio_contract/errors.py)",
        upstream_fix="server issue #7804 'InferenceResponse error code is lost in Python BLS' (no fix known)",
        fixed_in=None,
        checked="issue #7804 (seen on 24.09) still open in May 2025: confirmed; no fixing PR found.",
    ),
    Workaround(
        name="supervisor",
        why="the python backend never restarts a dead stub (the non-decoupled restart was removed in 24.06) and "
            "readiness keeps answering 200 for its model",
        what_we_do="stepaudio_server.supervisor reloads a model whose stub died; the guard's readiness says so",
        upstream_fix="none known",
        fixed_in=None,
        checked="not confirmed upstream: found neither the removal PR nor a restart feature in later releases.",
    ),
    Workaround(
        name="in_band_grpc_cancel",
        why="a client's cancellation of a gRPC call that Triton is still answering races the call's completion in "
            "the gRPC front end (the state a cancellation notification finds may be gone) and can segfault the "
            "whole server; the stream handler shares that cancellation code",
        what_we_do="no gRPC call is cancelled once it has finished or is finishing: the realtime bridge closes its "
                   "request side after the sequence's end and waits for the call to end (gateway/realtime.py), "
                   "clients close a stream after its final response (clients/triton_io.py); and the gateway "
                   "never cancels a running stream of a model that takes CANCEL (tts_stream, voice_chat_stream): the request carries "
                   "a secret cancel token, a client that leaves gets CANCEL = token sent to the model and the "
                   "stream read to its end in the background (gateway/triton.py); other streams a client leaves "
                   "are cancelled as before",
        upstream_fix="server PR #7840 'gRPC segfault due to Low Request Cancellation Timeout' and PR #8078 'Fix "
                     "gRPC cancellation race condition'",
        fixed_in="2.57",
        checked="both commits read in the server's git history: 3032c435e (#7840) is first in tag v2.53.0 and "
                "42811e0cd (#8078) first in v2.57.0; both change HandleCancellation, which ModelStreamInferHandler "
                "calls too. Not reproduced here: 26,094 tts_stream streams cancelled at random moments on 2.51 "
                "(2026-12-08) did not crash it.",
    ),
    Workaround(
        name="stalled_bls_streams",
        why="the decoupled streams of a stub that died are never ended, so their BLS callers and gRPC clients wait "
            "forever",
        what_we_do="bls.Stream and the gateway give up a stream silent for its stall timeout (UNAVAILABLE / 503)",
        upstream_fix="none known",
        fixed_in=None,
        checked="seen on 2.51 (tests/server); no upstream change found.",
    ),
    Workaround(
        name="http_guard",
        why="the HTTP front end crashes the whole server (stack overflow while parsing) on a ~100 kB body of deeply "
            "nested JSON, and has no option that bounds nesting or body size",
        what_we_do="stepaudio_server.http_guard bounds body size and JSON nesting before a byte reaches Triton",
        upstream_fix="none known",
        fixed_in=None,
        checked="reproduced on 2.51 (tests/server); no upstream change found.",
    ),
)
_BY_NAME = {w.name: w for w in WORKAROUNDS}


def parse_version(version: str) -> tuple[int, int]:
    """"2.51", "2.51.0" → (2, 51). Anything else is refused (a render value, so a typo fails the render)."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", version.strip())
    if match is None:
        raise ValueError(f"a Triton server version looks like '2.51', got {version!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class TritonFeatures:
    """What a server of ``version`` needs: ``needs(name)``, or one property per workaround the code switches."""

    version: str
    needed: frozenset[str]

    @classmethod
    def for_version(cls, version: str | None) -> TritonFeatures:
        version = version or DEFAULT_VERSION
        have = parse_version(version)
        needed = {w.name for w in WORKAROUNDS if w.fixed_in is None or have < parse_version(w.fixed_in)}
        return cls(version, frozenset(needed))

    def needs(self, name: str) -> bool:
        if name not in _BY_NAME:
            raise KeyError(f"no workaround {name!r} in stepaudio_contract/compat.py")
        return name in self.needed

    @property
    def error_output(self) -> bool:
        return self.needs("error_output")

    @property
    def cancel_input(self) -> bool:
        return self.needs("cancel_input")

    @property
    def retired_iterators(self) -> bool:
        return self.needs("retired_iterators")

    @property
    def requested_outputs_only(self) -> bool:
        return self.needs("requested_outputs_only")

    @property
    def in_band_grpc_cancel(self) -> bool:
        return self.needs("in_band_grpc_cancel")


def workaround(name: str) -> Workaround:
    return _BY_NAME[name]


def mismatch(rendered: str, served: str) -> str | None:
    """What is wrong with serving a repository rendered for ``rendered`` on a server of version ``served`` (e.g.
    its ``GET /v2`` metadata), or None. Workarounds the server does not need are harmless; missing ones are not."""
    missing = TritonFeatures.for_version(served).needed - TritonFeatures.for_version(rendered).needed
    if not missing:
        return None
    return (f"the model repository was rendered for Triton {rendered}, but the server is {served}, which needs the "
            f"workarounds {', '.join(sorted(missing))}: render it again with --set triton_version={served}")


# nvidia-pytriton wheels → the Triton server they embed (pytriton's changelog: "Version of Triton Inference Server
# embedded in wheel").
PYTRITON_SERVER = {"0.5.13": "2.51", "0.5.14": "2.51", "0.6.0": "2.51", "0.7.0": "2.51"}


def installed_version() -> str | None:
    """The Triton server this machine would run, where that can be told without starting it: an NGC container's
    ``TRITON_SERVER_VERSION``, else the nvidia-pytriton wheel's embedded server; None when neither says."""
    if os.environ.get("TRITON_SERVER_VERSION"):
        return ".".join(str(part) for part in parse_version(os.environ["TRITON_SERVER_VERSION"]))
    try:
        return PYTRITON_SERVER.get(metadata.version("nvidia-pytriton"))
    except metadata.PackageNotFoundError:
        return None

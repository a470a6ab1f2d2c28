"""Fuzzing /synthesize over HTTP on loopback: malformed JSON, wrong types, huge and empty fields, odd unicode,
broken base64, foreign audio formats. Every answer is a 4xx JSON error naming the field (never a 5xx), nothing
bad reaches sampling, and the endpoint answers a good request afterwards.

Here the endpoint's routes are served by uvicorn over a stand-in voice (tests/test_serve_routes.py's
`stub_server`: no Ray, seconds); tests/test_serve_limits.py sends the same `cases()` to the real endpoint on Ray
Serve, where text that parses reaches the real text front end."""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import select
import socket
import struct
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf

from sa_ray.config import ServeConfig

from .test_serve_routes import stub_server

TOKEN = "fuzz-token"
GOOD = {"text": "The cat sat on the mat.", "speaker": "mbrola-us1"}


@dataclass(frozen=True)
class Case:
    id: str
    body: bytes
    field: str | None  # the field the error names; None: the request may be spoken (text the text front end judges)
    status: int = 422
    says: str = ""  # a part of the error message


def post(
    url: str,
    body: bytes,
    headers: dict | None = None,
    timeout: float = 120,
    chunked: bool = False,
    path: str = "/synthesize",
) -> tuple[int, dict, bytes]:
    """(status, headers with lowercase names, body) of a POST, as a careful client sends it: a body over 64 KiB
    waits for `100 Continue` (as curl does) and stops being sent once an answer arrives, so that a server that
    refuses a body before reading it (413 on its Content-Length) is heard instead of a broken pipe. `chunked`:
    no Content-Length, the body in 64 KiB chunks."""
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    head = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}", **(headers or {})}
    head["Transfer-Encoding" if chunked else "Content-Length"] = "chunked" if chunked else str(len(body))
    if len(body) > PIECE:
        head["Expect"] = "100-continue"
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in head.items():
            if value is not None:
                connection.putheader(name, value)
        connection.endheaders()
        sock = connection.sock
        answered = "Expect" in head and _answered_before_the_body(sock)
        try:
            for i in range(0, len(body), PIECE):
                if answered or select.select([sock], [], [], 0)[0]:  # an answer came: the rest is not wanted
                    answered = True
                    break
                piece = body[i : i + PIECE]
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked and not answered:
                connection.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading; its answer may be waiting
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


PIECE = 2**16


def _answered_before_the_body(sock: socket.socket, wait: float = 5.0) -> bool:
    """After `Expect: 100-continue`: False once `100 Continue` came (consumed) or nothing came within `wait` (send
    the body anyway), True when a final answer came instead."""
    if not select.select([sock], [], [], wait)[0]:
        return False
    if sock.recv(12, socket.MSG_PEEK).split(b" ")[1:2] != [b"100"]:
        return True
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        interim += sock.recv(1)
    return False


def _json(body: object) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as its \\ud800 escape


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wav(seconds: float = 1.0, rate: int = 16000, channels: int = 1, subtype: str = "PCM_16", fill=0.01) -> bytes:
    samples = np.full((int(seconds * rate), channels), fill, np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _float_wav_with(value: float) -> bytes:
    samples = np.full((16000, 1), 0.1, np.float32)
    samples[100] = value
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _riff(rate: int, channels: int, claimed_bytes: int, payload: bytes) -> bytes:
    """A 16-bit PCM WAV whose header says what it is told to, whatever the payload."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(payload))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", claimed_bytes)
        + payload
    )


def silent_flac(seconds: int = 600, rate: int = 48000) -> bytes:
    """A decompression bomb: `seconds` of digital silence, written a second at a time (~90 KB for 600 s at 48 kHz,
    115 MB once decoded to float32)."""
    buffer, second = io.BytesIO(), np.zeros(rate, np.float32)
    with sf.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(second)
    return buffer.getvalue()


@functools.cache
def cases() -> tuple[Case, ...]:
    def field(name: str, value: object, **extra) -> bytes:
        return _json({**GOOD, name: value, **extra})

    def cloned(encoded: str) -> bytes:
        return _json({"text": GOOD["text"], "prompt_wav": encoded})

    wav = _b64(_wav())
    out = [
        # not JSON: 400, field body
        Case("empty-body", b"", "body", 400),
        Case("truncated-json", _json(GOOD)[:-1], "body", 400),
        Case("not-utf8", b'{"text": "\xff\xfe", "speaker": "mbrola-us1"}', "body", 400),
        Case("overlong-utf8", b'{"text": "\xc0\xaf", "speaker": "mbrola-us1"}', "body", 400),
        Case("nested-unclosed", b"[" * 100_000, "body", 400),
        Case("nested-closed", b"[" * 50_000 + b"]" * 50_000, "body", 400),
        Case("5000-digit-seed", _json(GOOD)[:-1] + b', "seed": ' + b"9" * 5000 + b"}", "body", 400),
        # JSON, but not an object
        Case("json-null", b"null", "body"),
        Case("json-string", b'"The cat sat on the mat."', "body"),
        Case("json-array", b"[1, 2]", "body"),
        # JSON's extensions Python reads
        Case("nan-temperature", _json(GOOD)[:-1] + b', "temperature": NaN}', "temperature"),
        Case("infinity-seed", _json(GOOD)[:-1] + b', "seed": Infinity}', "seed"),
        Case("1e999-temperature", _json(GOOD)[:-1] + b', "temperature": 1e999}', "temperature"),
        # wrong types
        *[
            Case(f"{name}-{type(value).__name__}-{i}", field(name, value), name)
            for name, values in {
                "text": [7, None, ["Hi."], {"a": 1}, True],
                "speaker": [1, None, ["mbrola-us1"]],
                "seed": ["1", 1.5, 2**63, -1, None, [], True],
                "temperature": ["hot", None, [], True, -0.1, 2.0001],
                "best_of": ["2", 2.0, None, [], True, 0, -1, ServeConfig().max_best_of + 1, 10**6],
                "version": [0, -1, 2.0, None, [], True, "", "la test", "v" * 100, 2**40, "\u00b2", "1e3"],
            }.items()
            for i, value in enumerate(values)
        ],
        *[
            Case(f"prompt_wav-{type(value).__name__}", cloned(value), "prompt_wav")  # type: ignore[arg-type]
            for value in (5, None, ["x"])
        ],
        # huge and empty fields
        Case("text-empty", field("text", ""), "text"),
        Case("text-blank", field("text", " \t\n "), "text"),
        Case("text-1M", field("text", "a" * 1_000_000), "text", says="at most 400"),  # under the body limit
        Case("body-over-limit", field("text", "a" * 1_100_000), "body", 413, "serve.max_body_bytes"),
        Case("speaker-empty", field("speaker", ""), "speaker"),
        Case("speaker-500k", field("speaker", "x" * 500_000), "speaker"),
        Case("prompt_wav-empty", cloned(""), "prompt_wav"),
        Case("prompt_wav-750k-zeros", cloned("A" * 1_000_000), "prompt_wav"),
        Case("key-100k", _json({**GOOD, "x" * 100_000: 1}), "x" * 60),  # named, cut short
        Case("keys-10k", _json({**GOOD, **{f"k{i}": i for i in range(10_000)}}), "k0"),
        # odd unicode
        Case("text-lone-high-surrogate", field("text", "\ud800 The cat."), "text"),
        Case("text-lone-low-surrogate", field("text", "The cat. \udfff"), "text"),
        Case("speaker-lone-surrogate", field("speaker", "\ud800"), "speaker"),
        Case("key-lone-surrogate", _json({**GOOD, "\ud800": 1}), "\\ud800"),
        Case("text-nul", field("text", "\x00The cat sat."), "text"),
        Case("text-bell", field("text", "The cat sat.\x07"), "text"),
        Case("text-rtl-override", field("text", "\u202eThe cat sat on the mat.\u202c"), None),
        Case("text-arabic", field("text", "مرحبا بالعالم"), None),
        Case("text-zero-width-only", field("text", "\u200b\u200c\u200d\ufeff"), None),
        Case("text-emoji", field("text", "😀🎉👍"), None),
        Case("text-combining-marks", field("text", "a" + "\u0301" * 399), None),
        Case("text-math-letters", field("text", "𝕳𝖊𝖑𝖑𝖔 𝖙𝖍𝖊𝖗𝖊."), None),
        # base64 that is not
        Case("prompt_wav-not-base64", cloned("not base64!"), "prompt_wav", says="base64"),
        Case("prompt_wav-truncated-padding", cloned(wav[:-3]), "prompt_wav", says="base64"),
        Case("prompt_wav-truncated-to-header", cloned(wav[:60]), "prompt_wav"),
        Case("prompt_wav-non-ascii", cloned(wav[:40] + "é" + wav[40:]), "prompt_wav", says="base64"),
        Case("prompt_wav-urlsafe", cloned(base64.urlsafe_b64encode(b"\xfb\xff" * 300).decode()), "prompt_wav"),
        Case("prompt_wav-data-url", cloned("data:audio/wav;base64," + wav), "prompt_wav", says="base64"),
        # foreign or lying audio
        Case(
            "mp3-ish",
            cloned(_b64(b"ID3\x04\x00\x00\x00\x00\x00\x10\xff\xfb\x90\x64" + bytes(range(256)) * 8)),
            "prompt_wav",
            says="not an audio file",
        ),  # fmt: skip
        Case("png", cloned(_b64(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(17))), "prompt_wav", says="not an"),
        Case("ogg-header", cloned(_b64(b"OggS\x00\x02" + bytes(20) + b"\x01\x1e\x01vorbis" + bytes(40))), "prompt_wav"),
        Case(
            "wav-claims-600s-holds-0.1s",
            cloned(_b64(_riff(44100, 1, 44100 * 2 * 600, b"\x00\x01" * 4410))),
            "prompt_wav",
            says="lasts 0.10 s",
        ),  # fmt: skip
        Case("wav-at-1-hz", cloned(_b64(_riff(1, 1, 60, b"\x00\x01" * 30))), "prompt_wav", says="1 Hz"),
        Case("wav-16-channels", cloned(_b64(_wav(0.6, 8000, 16))), "prompt_wav", says="16 channels"),
        Case("wav-1024-channels", cloned(_b64(_riff(16000, 1024, 2048 * 10, bytes(2048 * 10)))), "prompt_wav"),
        Case("float-wav-nan", cloned(_b64(_float_wav_with(np.nan))), "prompt_wav", says="NaN"),
        Case("float-wav-inf", cloned(_b64(_float_wav_with(-np.inf))), "prompt_wav", says="NaN"),
        Case("wav-0.1s", cloned(_b64(_wav(0.1))), "prompt_wav", says="lasts 0.10 s"),
        Case("wav-31s", cloned(_b64(_wav(31, 8000, subtype="PCM_U8"))), "prompt_wav", says="at most 30 s"),
        Case("silent-flac-600s", cloned(_b64(silent_flac())), "prompt_wav", says="600.00 s (its header says)"),
        # two voices, none
        Case("two-voices", field("prompt_wav", wav), "speaker"),
        Case("no-voice", _json({"text": "Hi."}), "speaker"),
    ]
    assert len({c.id for c in out}) == len(out), "case ids must be unique"
    return tuple(out)


def check(case: Case, status: int, headers: dict, content: bytes) -> str | None:
    """What is wrong with an answer to a case (None: nothing)."""
    if case.field is None and status == 200:
        return None if headers.get("content-type") == "audio/wav" else f"200 of {headers.get('content-type')}"
    if not 400 <= status < 500:
        return f"status {status}: {content[:300]!r}"
    if headers.get("content-type") != "application/json":
        return f"{status} of {headers.get('content-type')}: {content[:300]!r}"
    error = json.loads(content)
    expected = (case.field or "text", case.status if case.field else 422)
    if (error.get("field"), status) != expected or not error.get("error") or case.says not in error["error"]:
        return f"{status} {error!r}, expected {expected} saying {case.says!r}"
    return None


@pytest.fixture(scope="module")
def endpoint():
    with stub_server({"auth_token": TOKEN}) as url:
        yield url


def test_every_bad_request_is_a_4xx_json_error_naming_its_field(endpoint):
    assert len(cases()) > 70
    wrong = {}
    for case in cases():
        if problem := check(case, *post(endpoint, case.body)):
            wrong[case.id] = problem
    assert not wrong, json.dumps(wrong, indent=1, ensure_ascii=False)
    # only what parses reached the (stand-in) voice, and the endpoint still speaks
    with urllib.request.urlopen(f"{endpoint}/_stub/sampled", timeout=30) as response:
        sampled = json.load(response)["texts"]
    assert len(sampled) == sum(c.field is None for c in cases())
    status, headers, content = post(endpoint, _json(GOOD))
    assert (status, headers["content-type"], content) == (200, "audio/wav", b"RIFF-a-take")

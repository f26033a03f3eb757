"""The wire format on its own: hello validation, chunk checks, PCM and frame encodings (no server)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from luna.serving import protocol
from luna.serving.protocol import ProtocolError

RATES = [16000, 22050]


def hello(**kw):
    return protocol.parse_hello({"type": "hello", "mode": "stream", "sample_rate": 16000, **kw}, RATES, 2)


def test_hello_defaults_and_fields():
    h = hello()
    assert (h.mode, h.sample_rate, h.format, h.audio, h.num_quantizers, h.sample_width) == ("stream", 16000, "f32le", False, None, 4)
    assert hello(mode="turn").audio is True  # a turn sends the reconstruction unless told not to
    assert hello(format="s16le", num_quantizers=1).sample_width == 2


@pytest.mark.parametrize("fields, code", [
    ({"sample_rate": 12345}, "unsupported_rate"),
    ({"sample_rate": "16000"}, "bad_hello"),
    ({"format": "f64le"}, "unsupported_format"),
    ({"mode": "batch"}, "bad_hello"),
    ({"num_quantizers": 3}, "bad_hello"),
    ({"audio": "yes"}, "bad_hello"),
    ({"colour": "blue"}, "bad_hello"),
])
def test_bad_hello(fields, code):
    with pytest.raises(ProtocolError) as e:
        hello(**fields)
    assert e.value.code == code
    msg = json.loads(e.value.to_json())
    assert msg["type"] == "error" and msg["code"] == code and "\n" not in msg["message"]


def test_bad_json_and_chunks():
    for text in ("{not json", "[1, 2]", '{"type": 3}'):
        with pytest.raises(ProtocolError, match="JSON") as e:
            protocol.parse_json(text)
        assert e.value.code == "bad_json"
    for data, h, code in [(b"\0" * 8, None, "binary_before_hello"), (b"\0" * 12, hello(), "chunk_too_large"),
                          (b"\0" * 6, hello(), "bad_alignment"), (b"\0" * 3, hello(format="s16le"), "bad_alignment")]:
        with pytest.raises(ProtocolError) as e:
            protocol.check_chunk(data, h, max_chunk_bytes=10)
        assert e.value.code == code
    protocol.check_chunk(b"\0" * 8, hello(), max_chunk_bytes=10)


def test_pcm_and_frames_round_trip():
    x = torch.linspace(-1, 0.99, 101)
    assert torch.equal(protocol.decode_pcm(protocol.encode_pcm(x), "f32le"), x)
    assert (protocol.decode_pcm(protocol.encode_pcm(x, "s16le"), "s16le") - x).abs().max() <= 1 / 32768
    index, y = protocol.parse_audio_frame(protocol.audio_frame(12345, x))
    assert index == 12345 and np.array_equal(y, x.numpy())
    msg = json.loads(protocol.codes_message(7, torch.tensor([[1, 2], [3, 4]]), chunk=3))
    assert msg == {"type": "codes", "index": 7, "codes": [[1, 2], [3, 4]], "chunk": 3}


WRONG_TYPES = [None, True, 1.5, -3, "x", "", [], ["f32le"], {}, {"a": 1}, [[1]]]
FIELDS = ["mode", "sample_rate", "format", "audio", "num_quantizers", "token"]


@pytest.mark.parametrize("field", FIELDS)
def test_hello_fuzz_every_field_wrong_type_is_a_protocol_error(field):
    """Any JSON value in any field is refused with a ProtocolError (never a TypeError: an unhashable format hung)."""
    refused = 0
    for value in WRONG_TYPES:
        try:
            hello(**{field: value})
        except ProtocolError as e:
            assert e.code in ("bad_hello", "unsupported_rate", "unsupported_format"), (field, value, e.code)
            refused += 1
    assert refused >= len(WRONG_TYPES) - 3, field  # a few values are legal for some fields (e.g. audio=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_f32_pcm_is_bad_input(bad):
    x = np.zeros(64, dtype="<f4")
    x[17] = bad
    with pytest.raises(ProtocolError) as e:
        protocol.decode_pcm(x.tobytes(), "f32le")
    assert e.value.code == "bad_input"

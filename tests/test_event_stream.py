"""The event-stream encoder, checked by botocore's own decoder and SageMaker's service model."""

from __future__ import annotations

import json

import botocore.session
import pytest
from botocore import eventstream as bes
from botocore.parsers import EventStreamJSONParser
from hypothesis import given, settings
from hypothesis import strategies as st

from container.frontend import event_stream


class ChunkedStream:
    """What botocore reads an HTTP body through: .stream() yields chunks of any size."""

    def __init__(self, data: bytes, chunk: int):
        self.data, self.chunk = data, chunk

    def stream(self):
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i:i + self.chunk]

    def close(self):
        pass


def sagemaker_stream(data: bytes, chunk: int = 7) -> bes.EventStream:
    """botocore's EventStream for InvokeEndpointWithResponseStream's Body, over `data`."""
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    operation = model.operation_model("InvokeEndpointWithResponseStream")
    shape = operation.output_shape.members["Body"]
    return bes.EventStream(ChunkedStream(data, chunk), shape, EventStreamJSONParser(),
                           operation.name)


def decode(data: bytes) -> list[bes.EventStreamMessage]:
    buffer = bes.EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def test_payload_parts_parse_as_sagemaker_events_across_chunk_boundaries():
    pieces = [b'{"token": {"text": " Paris"}}\n', b"", "é 你好 🙂".encode(), bytes(range(256))]
    data = b"".join(event_stream.payload_part(p) for p in pieces)
    for chunk in (1, 5, 64, len(data)):
        events = list(sagemaker_stream(data, chunk))
        assert events == [{"PayloadPart": {"Bytes": p}} for p in pieces]


def test_message_layout_matches_botocore_decoder():
    message = event_stream.encode_message(
        {":event-type": "PayloadPart", "flag": True, "off": False, "count": -7,
         "blob": b"\x00\x01"}, b"hello")
    [decoded] = decode(message)
    assert decoded.payload == b"hello"
    assert decoded.headers == {":event-type": "PayloadPart", "flag": True, "off": False,
                               "count": -7, "blob": b"\x00\x01"}
    assert decoded.prelude.total_length == len(message)
    assert decoded.to_response_dict()["status_code"] == 200


def test_exception_event_raises_model_stream_error_in_botocore():
    data = event_stream.payload_part(b"partial") + event_stream.exception(
        "ModelStreamError", "the model broke", "ModelStreamError")
    events = iter(sagemaker_stream(data))
    assert next(events) == {"PayloadPart": {"Bytes": b"partial"}}
    with pytest.raises(bes.EventStreamError) as raised:
        next(events)
    assert raised.value.response["Error"]["Code"] == "ModelStreamError"
    assert raised.value.response["Error"]["Message"] == "the model broke"


@pytest.mark.parametrize("offset", [2, 9, 20, -2])
def test_corrupted_byte_fails_the_checksum(offset):
    message = bytearray(event_stream.payload_part(b"some payload bytes"))
    message[offset] ^= 0x40
    with pytest.raises((bes.ChecksumMismatch, bes.ParserError)):
        decode(bytes(message))


def test_limits_and_bad_headers_are_refused():
    with pytest.raises(ValueError):
        event_stream.encode_message({"": "x"})
    with pytest.raises(ValueError):
        event_stream.encode_message({"x": "y" * 70000})
    with pytest.raises(TypeError):
        event_stream.encode_message({"x": 1.5})
    with pytest.raises(ValueError):
        event_stream.encode_message({}, b"x" * (event_stream.MAX_PAYLOAD_LENGTH + 1))


def test_split_keeps_every_byte():
    data = bytes(range(256)) * 10
    parts = event_stream.split(data, 300)
    assert b"".join(parts) == data and max(map(len, parts)) == 300
    assert event_stream.split(b"") == [b""]


header_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                       max_size=20).filter(lambda s: len(s.encode()) < 256)
header_values = st.one_of(st.text(max_size=50), st.binary(max_size=50), st.booleans(),
                          st.integers(-2**31, 2**31 - 1))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(header_names, header_values, max_size=5), st.binary(max_size=2000))
def test_any_headers_and_payload_round_trip(headers, payload):
    [decoded] = decode(event_stream.encode_message(headers, payload))
    assert decoded.headers == headers
    assert decoded.payload == payload


def test_exception_payload_is_json():
    [decoded] = decode(event_stream.exception("InternalStreamFailure", "x"))
    assert json.loads(decoded.payload) == {"Message": "x"}
    assert decoded.headers[":message-type"] == "exception"

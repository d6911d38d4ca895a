"""DJL's binary frames: checked against bytes built here from the Java side's field layout."""
import socket
import struct

import pytest

from djl_python import Input, Output


def s16(n):
    return struct.pack(">h", n)


def s32(n):
    return struct.pack(">i", n)


def text(value):
    data = value.encode("utf-8")
    return s16(len(data)) + data


def java_request(properties, content):
    """What DJL's Java RequestEncoder writes for an Input."""
    out = s16(len(properties))
    for key, value in properties.items():
        out += text(key) + text(value)
    out += s16(len(content))
    for key, value in content:
        out += text(key) + s32(len(value)) + value
    return out


def test_request_frame_decodes_to_input():
    frame = java_request({"Content-Type": "application/json", "handler": "predict", "é": "ü"},
                         [("data", b'{"a": 1}'), ("extra", b"\x00\xff")])
    inputs = Input.decode(frame)
    assert inputs.get_as_json() == {"a": 1}
    assert bytes(inputs.get_as_bytes("extra")) == b"\x00\xff"
    assert inputs.get_property("content-type") == "application/json"
    assert inputs.get_properties()["é"] == "ü"
    assert inputs.get_function_name() == "predict"


def test_input_encode_matches_java_layout():
    inputs = Input()
    inputs.properties = {"k": "v"}
    inputs.content.add("data", b"hello")
    assert bytes(inputs.encode()) == java_request({"k": "v"}, [("data", b"hello")])


def test_response_frame_layout():
    out = Output(code=201, message="Created").add_property("X-A", "1")
    out.add(b"raw", key="first").add("text", key=None)
    expected = (s16(201) + text("Created") + s16(1) + text("X-A") + text("1") + s16(2)
                + text("first") + s32(3) + b"raw" + s16(-1) + s32(4) + b"text")
    assert bytes(out.encode()) == expected
    back = Output.decode(expected)
    assert (back.code, back.message, back.properties) == (201, "Created", {"X-A": "1"})
    assert back.content.get_keys() == ["first", None]
    assert back.content.get_values() == [b"raw", b"text"]


def read_all(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_socket_round_trip_and_stream_frames():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(java_request({"handler": "handle"}, [("data", b"x" * 70000)]))
        inputs = Input().read(right)
        assert len(inputs.get_as_bytes()) == 70000      # read across several recv() calls

        out = Output().add_stream_content(iter(["a", b"bc", {"d": 1}]))
        out.send(right)
        right.shutdown(socket.SHUT_WR)
        frame = read_all(left)
    head = s16(200) + text("OK") + s16(0) + s16(-1)
    assert frame.startswith(head)
    frames = frame[len(head):]
    expected = (b"\x01" + s32(1) + b"a" + b"\x01" + s32(2) + b"bc"
                + b"\x01" + s32(8) + b'{"d":1}\n' + b"\x00" + s32(0))
    assert frames == expected
    assert Output.decode(frame).content.value_at(0) == b'abc{"d":1}\n'


def test_stream_error_ends_with_last_frame_carrying_message():
    def broken():
        yield "ok"
        raise RuntimeError("boom")

    left, right = socket.socketpair()
    with left, right:
        Output().add_stream_content(broken()).send(right)
        right.shutdown(socket.SHUT_WR)
        frame = read_all(left)
    assert frame.endswith(b"\x00" + s32(4) + b"boom")


def test_binary_encode_property_map():
    data = Output.binary_encode({"data": "tok", "last": True, "code": 424})
    # count, then key/value strings, values as str()
    expected = (s16(3) + text("data") + text("tok") + text("last") + text("True")
                + text("code") + text("424"))
    assert bytes(data) == expected
    assert Input.binary_decode(expected) == {"data": "tok", "last": "True", "code": "424"}


def test_truncated_frame_is_an_error():
    frame = java_request({"a": "b"}, [("data", b"12345")])
    with pytest.raises(ValueError):
        Input.decode(frame[:-2])


def test_string_longer_than_16_bits_is_refused():
    with pytest.raises(ValueError):
        Output.binary_encode({"data": "x" * 40000})

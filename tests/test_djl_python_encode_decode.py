"""encode_decode and Input/Output codecs, checked against csv, json, numpy and PIL themselves."""
import csv
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from djl_python import Input, Output
from djl_python.encode_decode import decode, decode_csv, encode, encode_csv
from djl_python.np_util import from_nd_list, get_str, set_str, to_nd_list


def request(body: bytes, content_type=None, key="data") -> Input:
    inputs = Input()
    if content_type:
        inputs.properties["Content-Type"] = content_type
    inputs.content.add(key, body)
    return inputs


def png_bytes():
    image = Image.new("RGB", (3, 2))
    image.putpixel((2, 1), (10, 20, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_csv_with_inputs_header_and_numeric_matrix():
    body = 'inputs,other\n"hello, world",1\nsecond,2\n'
    assert decode(request(body.encode()), "text/csv") == {
        "inputs": [row["inputs"] for row in csv.DictReader(io.StringIO(body))]}
    rows = decode(request(b"question,context\nq1,c1\n"), "text/csv; charset=utf-8")
    assert rows == {"inputs": [{"question": "q1", "context": "c1"}]}
    matrix = decode(request(b"1,2\n3,4.5\n"), "text/csv", require_csv_headers=False)
    assert np.array_equal(matrix, np.loadtxt(io.StringIO("1,2\n3,4.5"), delimiter=","))
    with pytest.raises(ValueError):
        decode_csv(request(b"a,b\n1,2\n"))
    with pytest.raises(ValueError):
        decode_csv(request(b"1,x\n"), require_headers=False)


def test_encode_csv_round_trips_through_csv_module():
    rows = [{"name": "Axl, Jr.", "age": "30"}, {"name": 'say "hi"', "age": "25"}]
    out = encode(Output(), rows, "text/csv")
    assert out.properties["Content-Type"] == "text/csv"
    assert list(csv.DictReader(io.StringIO(out.content.value_at(0).decode()))) == rows
    assert encode_csv([]) == ""


def test_json_text_and_no_type():
    assert decode(request(b'{"inputs": "x"}'), "application/json") == {"inputs": "x"}
    assert decode(request(b'[1, 2]'), None) == [1, 2]
    assert decode(Input(), None) == {"inputs": ""}
    assert decode(request("héllo".encode()), "text/plain") == {"inputs": ["héllo"]}
    assert decode(request(b"a=1&b=2"), "application/x-www-form-urlencoded") == {"inputs": "a=1&b=2"}
    assert decode(request(b"\x00\x01"), "application/octet-stream") == {"inputs": b"\x00\x01"}
    out = encode(Output(), {"r": [1, 2]}, "application/json, text/plain")
    assert json.loads(out.content.value_at(0)) == {"r": [1, 2]}


def test_jsonlines_both_ways():
    lines = [{"a": 1}, {"b": [2, 3]}]
    body = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    assert decode(request(body.encode()), "application/jsonlines") == {"inputs": lines}
    out = encode(Output(), lines, "application/jsonlines")
    text = out.content.value_at(0).decode()
    assert [json.loads(line) for line in text.splitlines()] == lines
    assert text.endswith("\n") and out.properties["Content-Type"] == "application/jsonlines"


def test_npz_decode_and_encode_agree_with_numpy():
    arrays = [np.arange(6, dtype=np.int16).reshape(2, 3), np.array([0.5, -1.0])]
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    decoded = decode(request(buffer.getvalue()), "tensor/npz")["inputs"]
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, decoded))
    out = encode(Output(), arrays, "tensor/npz")
    archive = np.load(io.BytesIO(out.content.value_at(0)))
    assert [archive[name].tolist() for name in archive.files] == [a.tolist() for a in arrays]


def test_ndlist_header_follows_djl_layout():
    array = np.array([[1.5, 2.5]], dtype=np.float32)
    data = bytes(to_nd_list(array))
    count, magic_len = struct.unpack(">ih", data[:6])
    assert (count, data[6:6 + magic_len]) == (1, b"NDAR")
    assert struct.unpack(">i", data[10:14])[0] == 3             # version
    # the raw little-endian payload closes the record
    assert data.endswith(struct.pack(">i", 8) + array.astype("<f4").tobytes())
    out = encode(Output(), [array], "application/x-custom")
    assert out.properties["Content-Type"] == "tensor/ndlist"
    assert np.array_equal(decode(request(out.content.value_at(0)), "tensor/ndlist")["inputs"][0],
                          array)
    assert get_str(set_str("héllo"), 0) == ("héllo", 8)


def test_big_endian_arrays_keep_their_values():
    array = np.array([1, 256, -3], dtype=">i4")
    assert from_nd_list(to_nd_list(array))[0].tolist() == [1, 256, -3]


def test_images_decode_with_pil():
    image = decode(request(png_bytes()), "image/png")["inputs"]
    assert image.size == (3, 2) and image.getpixel((2, 1)) == (10, 20, 30)
    assert request(png_bytes(), "image/png").get_data().getpixel((2, 1)) == (10, 20, 30)


def test_get_as_csv_rows():
    inputs = request(b'a,b\n1,"x,y"\n')
    assert inputs.get_as_csv() == [{"a": "1", "b": "x,y"}]


def test_batches_share_unprefixed_properties():
    inputs = Input()
    inputs.properties = {"batch_size": "2", "model_dir": "/m", "batch_0.tenant": "a",
                         "batch_001.model_dir": "/own"}
    inputs.content.add("batch_0.data", b"0")
    inputs.content.add("batch_001.data", b"1")
    first, second = inputs.get_batches()
    assert first.properties == {"model_dir": "/m", "tenant": "a"}
    assert second.properties == {"model_dir": "/own"}
    assert (first.get_as_string(), second.get_as_string()) == ("0", "1")
    inputs.content.add("stray", b"?")
    with pytest.raises(ValueError):
        inputs.get_batches()


def test_output_add_as_string_and_finalize_result():
    out = Output().add_as_string("é", batch_index=2)
    assert out.content.get_keys() == ["batch_002."]
    assert out.content.value_at(0) == "é".encode()
    assert Output().execute_finalize() is None
    assert Output().finalize(pow, 2, 5).execute_finalize() == 32


def test_printing_an_input_shows_decoded_content_and_survives_bad_bodies():
    good = request(b'{"a": 1}', "application/json")
    assert str(good) == "properties: {'Content-Type': 'application/json'}\ndata: {'a': 1}"
    assert str(request(b"{not json", "application/json")).endswith("data: <9 bytes>")

"""The djl_python API a DJL handler is written against."""
import io
import json

import numpy as np

from djl_python import Input, Output, PairList
from djl_python.encode_decode import decode, encode
from djl_python.np_util import from_nd_list, to_nd_list


def batched_input():
    inputs = Input()
    inputs.properties = {"batch_size": "2", "batch_000.Content-Type": "application/json",
                         "batch_001.content-type": "text/plain", "batch_001.tenant": "b"}
    inputs.content.add("batch_000.data", b'{"a": 1}')
    inputs.content.add("batch_001.data", b"hello")
    return inputs


def test_batches_split_properties_and_content():
    inputs = batched_input()
    assert inputs.is_batch() and inputs.get_batch_size() == 2
    first, second = inputs.get_batches()
    assert first.get_data() == {"a": 1}
    assert second.get_data() == "hello"
    assert second.get_property("TENANT") == "b"
    assert first.get_property("content-type") == "application/json"


def test_single_input_accessors():
    inputs = Input()
    inputs.properties = {"Content-Type": "application/json"}
    inputs.content.add("data", b'{"x": [1, 2]}')
    inputs.content.add("extra", b"bytes")
    assert not inputs.is_batch() and inputs.get_batches() == [inputs]
    assert inputs.get_as_json() == {"x": [1, 2]}
    assert inputs.get_as_string("extra") == "bytes"
    assert inputs.get_as_bytes() == b'{"x": [1, 2]}'
    assert inputs.contains_key("extra") and not inputs.contains_key("nope")
    assert not inputs.is_empty() and Input().is_empty()


def test_numpy_round_trips():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)]
    decoded = from_nd_list(to_nd_list(arrays))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, decoded))
    inputs = Input()
    inputs.properties = {"content-type": "tensor/ndlist"}
    inputs.content.add("data", bytes(to_nd_list(arrays)))
    assert np.array_equal(inputs.get_data()[0], arrays[0])
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    inputs = Input()
    inputs.content.add("data", buffer.getvalue())
    assert np.array_equal(inputs.get_as_npz()[1], arrays[1])


def test_output_batch_index_and_error():
    out = Output()
    out.add("text", batch_index=0).add({"k": 1}, batch_index=1)
    assert out.content.get_keys() == ["batch_000.", "batch_001."]
    assert json.loads(out.content.value_at(1)) == {"k": 1}
    failed = Output().error("bad thing", code=424)
    body = json.loads(failed.content.value_at(0))
    assert failed.code == 424 and body["error"] == "bad thing" and body["code"] == 424


def test_output_numpy_and_stream():
    out = Output().add_as_numpy([np.ones(3)])
    assert np.array_equal(from_nd_list(out.content.value_at(0))[0], np.ones(3))
    stream = Output().add_stream_content(iter([1, 2]), output_formatter=str)
    assert stream.stream_content is not None and stream.stream_formatter is str
    called = []
    stream.finalize(called.append, "done")
    from container.workers.handler_service import _run_finalize

    _run_finalize(stream)
    assert called == ["done"]


def test_pair_list_and_encode_decode():
    pairs = PairList(pair_list=[("a", 1), ("a", 2)])
    assert pairs.get("a") == 1 and pairs.size() == 2 and pairs.value_at(1) == 2
    inputs = Input()
    inputs.properties = {"content-type": "application/json"}
    inputs.content.add("data", b"[1, 2]")
    assert decode(inputs) == [1, 2]
    out = encode(Output(), {"r": 3})
    assert json.loads(out.content.value_at(0)) == {"r": 3}

"""One request's translation: our SamplingParams -> TensorRT-LLM's, streamed output -> tokens.

Pure functions; the outputs below are plain objects shaped like TensorRT-LLM's CompletionOutput.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from container.engines.trtllm_requests import finish_reason, read_progress, sampling_kwargs
from container.workers.protocol import SamplingParams

EOS = [2, 128009]


def test_greedy_by_default():
    kwargs = sampling_kwargs(SamplingParams(max_new_tokens=7), EOS)
    assert kwargs == {"max_tokens": 7, "end_id": 2, "pad_id": 2, "ignore_eos": False,
                      "detokenize": False, "include_stop_str_in_output": True,
                      "stop_token_ids": [128009], "top_k": 1}


def test_temperature_zero_is_greedy_even_when_sampling():
    kwargs = sampling_kwargs(SamplingParams(do_sample=True, temperature=0.0), EOS)
    assert kwargs["top_k"] == 1 and "temperature" not in kwargs


def test_sampling_parameters():
    p = SamplingParams(do_sample=True, temperature=0.7, top_k=40, top_p=0.9, seed=5,
                       repetition_penalty=1.2, logprobs=True, stop_token_ids=[13])
    kwargs = sampling_kwargs(p, EOS)
    assert {k: kwargs[k] for k in ("temperature", "top_k", "top_p", "seed",
                                   "repetition_penalty", "logprobs")} == {
        "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 5, "repetition_penalty": 1.2,
        "logprobs": 1}
    assert kwargs["stop_token_ids"] == [128009, 13]


def test_off_values_are_left_to_the_library():
    kwargs = sampling_kwargs(SamplingParams(do_sample=True, temperature=1.0, top_k=0,
                                            top_p=1.0), [2])
    assert "top_k" not in kwargs and "top_p" not in kwargs and "seed" not in kwargs
    assert "repetition_penalty" not in kwargs and "logprobs" not in kwargs
    assert "stop_token_ids" not in kwargs


def test_ignore_eos_drops_the_extra_eos_stops():
    kwargs = sampling_kwargs(SamplingParams(ignore_eos=True), EOS)
    assert kwargs["ignore_eos"] is True and "stop_token_ids" not in kwargs


def output(token_ids, finish=None, stop=None, logprobs=None):
    return SimpleNamespace(token_ids=token_ids, finish_reason=finish, stop_reason=stop,
                           logprobs=logprobs or [])


def test_progress_reports_only_new_tokens():
    progress = read_progress(output([5, 6, 7]), 1, EOS, False)
    assert (progress.new_token_ids, progress.sent, progress.finish_reason) == ([6, 7], 3, None)
    assert progress.logprobs is None


@pytest.mark.parametrize("entries", [
    [-0.1, -0.2, -0.3],                                                  # older: floats
    [{5: SimpleNamespace(logprob=-0.1)}, {6: SimpleNamespace(logprob=-0.2)},
     {7: SimpleNamespace(logprob=-0.3), 9: SimpleNamespace(logprob=-9.0)}],   # newer: top-k
])
def test_logprobs_of_the_sampled_tokens(entries):
    progress = read_progress(output([5, 6, 7], logprobs=entries), 1, EOS, True)
    assert progress.logprobs == [-0.2, -0.3]


def test_missing_logprobs_become_none():
    assert read_progress(output([5, 6], logprobs=[-0.1]), 0, EOS, True).logprobs is None


@pytest.mark.parametrize("finish, stop, expected", [
    (None, None, None),
    ("length", None, "length"),
    ("stop", None, "eos_token"),           # END_ID
    ("stop", 128009, "eos_token"),         # a second EOS id, passed as a stop token
    ("stop", 13, "stop_sequence"),         # a request's stop token
    ("cancelled", None, "cancelled"),
    ("timeout", None, "timeout"),
])
def test_finish_reasons(finish, stop, expected):
    assert finish_reason(output([1], finish, stop), EOS) == expected

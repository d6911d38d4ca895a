"""`@output_formatter`: mark the model.py function that writes each generation step's text.

It is called once per step with a TextGenerationOutput (see request_io) and returns a str
(or bytes, or a JSON-able value) to send; a non-streamed answer is the steps' texts joined.
"""

from .request_io import RequestOutput, Sequence, TextGenerationOutput, Token  # noqa: F401


def output_formatter(function):
    function.is_output_formatter = True     # how the server finds it in model.py
    return function

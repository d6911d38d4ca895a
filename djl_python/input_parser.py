"""`@input_formatter`: mark the model.py function that turns a request into the engine's input.

Two shapes, as LMI has them: `f(decoded_payload: dict, tokenizer=None, **kwargs) -> dict`
(the JSON body in, an LMI / OpenAI body out), or `f(input_item: Input, **kwargs) ->
RequestInput` (a TextInput with input_text and parameters).
"""


def input_formatter(function):
    function.is_input_formatter = True      # how the server finds it in model.py
    return function

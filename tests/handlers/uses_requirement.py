"""Imports a package that only requirements.txt installs."""
from djl_python import Input, Output


def handle(inputs: Input):
    import serve_test_requirement

    if inputs.is_empty():
        return None
    return Output().add_as_json({"answer": serve_test_requirement.ANSWER})

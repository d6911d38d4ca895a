"""Read a request body and write a prediction by content type, as DJL's default handlers do.

decode() wraps everything but JSON in {"inputs": ...}, the shape DJL's handlers expect.
"""

from __future__ import annotations

import csv
import io
import json

from .inputs import Input
from .outputs import Output

# DJL's CSV for text models must name one of these columns in its header line.
CSV_HEADERS = ("question", "context", "inputs")
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-ndjson")


def decode_csv(inputs: Input, require_headers: bool = True):
    """CSV rows: {"inputs": [...]} for text models, or a float matrix when headers are off."""
    text = inputs.get_as_string()
    if not require_headers:
        import numpy as np

        matrix = np.genfromtxt(io.StringIO(text), delimiter=",")
        if np.isnan(matrix).any():
            raise ValueError("CSV contains non-numeric data. Please provide numeric data only.")
        return matrix
    lines = text.splitlines()
    header = lines[0].lower() if lines else ""
    if not any(name in header for name in CSV_HEADERS):
        raise ValueError("You need to provide the correct CSV with Header columns "
                         f"({', '.join(CSV_HEADERS)}) to use the default handler.")
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and "inputs" in rows[0]:
        return {"inputs": [row["inputs"] for row in rows]}
    return {"inputs": rows}


def encode_csv(content) -> str:
    """A list of dicts (or any iterable of them) as CSV text with a header line."""
    rows = list(content)
    if not rows:
        return ""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def decode_jsonlines(inputs: Input, key: str | None = None) -> list:
    """One JSON value per non-blank line."""
    return [json.loads(line) for line in inputs.get_as_string(key=key).splitlines()
            if line.strip()]


def encode_jsonlines(prediction) -> str:
    items = prediction if isinstance(prediction, (list, tuple)) else [prediction]
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _media_type(content_type: str | None) -> str:
    """The first media type of a Content-Type / Accept value, lower case, no parameters."""
    return (content_type or "").split(",")[0].split(";")[0].strip().lower()


def decode(inputs: Input, content_type: str | None = None, key: str | None = None,
           require_csv_headers: bool = True):
    """The request body by its content type (pass the request's Content-Type)."""
    media = _media_type(content_type)
    if not media:
        # No type: JSON if there is a body, else an empty prompt.
        if not inputs.get_as_bytes(key=key):
            return {"inputs": ""}
        return inputs.get_as_json(key=key)
    if media in JSONLINES_TYPES:    # before JSON: "application/jsonlines" contains it
        return {"inputs": decode_jsonlines(inputs, key=key)}
    if "application/json" in media:
        return inputs.get_as_json(key=key)
    if "text/csv" in media:
        if require_csv_headers:
            return decode_csv(inputs)
        return decode_csv(inputs, require_headers=False)
    if "text/plain" in media:
        return {"inputs": [inputs.get_as_string(key=key)]}
    if media.startswith("image/"):
        return {"inputs": inputs.get_as_image(key=key)}
    if media.startswith("audio/"):
        return {"inputs": inputs.get_as_bytes(key=key)}
    if "tensor/npz" in media:
        return {"inputs": inputs.get_as_npz(key=key)}
    if media in ("tensor/ndlist", "application/x-npy"):
        return {"inputs": inputs.get_as_numpy(key=key)}
    if media == "application/x-www-form-urlencoded":
        return {"inputs": inputs.get_as_string(key=key)}
    return {"inputs": inputs.get_as_bytes(key=key)}


def encode(outputs: Output, prediction, content_type: str | None = None,
           key: str | None = None) -> Output:
    """Write the prediction in the accepted type (pass the request's Accept); JSON by default.

    Types DJL does not name as text fall back to its binary NDList ("tensor/ndlist").
    """
    media = _media_type(content_type)
    if media in JSONLINES_TYPES:    # before JSON: "application/jsonlines" contains it
        outputs.add_as_string(encode_jsonlines(prediction), key=key)
        outputs.add_property("Content-Type", media)
    elif not media or media == "*/*" or "application/json" in media:
        outputs.add_as_json(prediction, key=key)
        outputs.add_property("Content-Type", "application/json")
    elif "text/csv" in media:
        outputs.add_as_string(encode_csv(prediction), key=key)
        outputs.add_property("Content-Type", "text/csv")
    elif "tensor/npz" in media:
        outputs.add_as_npz(prediction, key=key)
        outputs.add_property("Content-Type", "tensor/npz")
    else:
        outputs.add_as_numpy(prediction, key=key)
        outputs.add_property("Content-Type", "tensor/ndlist")
    return outputs

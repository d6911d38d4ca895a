"""Turn InvokeEndpointWithResponseStream's events into lines and text.

The container streams JSON lines (LMI: {"token": {"text": ...}} per token, the last line adding
"generated_text"; chat: OpenAI chunk objects). SageMaker cuts that byte stream into PayloadPart
events wherever it likes, so a line can span parts, or a part hold several lines: buffer bytes
and split on newlines, never parse a part by itself.
"""

from __future__ import annotations

import json
from typing import Iterable, Iterator


def payload_bytes(events: Iterable[dict]) -> Iterator[bytes]:
    """The bytes of each PayloadPart; a ModelStreamError event raises from botocore itself."""
    for event in events:
        part = event.get("PayloadPart")
        if part is not None:
            yield part["Bytes"]


def lines(events: Iterable[dict]) -> Iterator[dict]:
    """Each complete JSON line of the stream, parsed."""
    buffer = b""
    for chunk in payload_bytes(events):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)


def token_texts(events: Iterable[dict]) -> Iterator[str]:
    """The text of each streamed piece, for LMI token lines and OpenAI chat / completion chunks."""
    for line in lines(events):
        if "token" in line:
            yield line["token"].get("text", "")
        elif line.get("choices"):
            choice = line["choices"][0]
            yield (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def stream_text(response: dict, echo: bool = False) -> str:
    """The whole streamed text of an invoke_endpoint_with_response_stream response."""
    pieces = []
    for text in token_texts(response["Body"]):
        pieces.append(text)
        if echo:
            print(text, end="", flush=True)
    if echo:
        print()
    return "".join(pieces)

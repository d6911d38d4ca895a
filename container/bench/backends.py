"""One benchmark request per call, against each kind of endpoint, timed chunk by chunk."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from .metrics import RequestResult
from .workload import Prompt


class Chunks:
    """Arrival times of streamed chunks that carry tokens."""

    def __init__(self, started: float):
        self.started = started
        self.times: list[float] = []

    def arrived(self) -> None:
        self.times.append(time.perf_counter())

    def result(self, tokens: int, prompt_tokens: int) -> RequestResult:
        end = time.perf_counter()
        if not self.times:
            return RequestResult(False, error="no tokens streamed")
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return RequestResult(True, prompt_tokens, tokens, self.times[0] - self.started,
                             end - self.started, gaps)


async def _lines(response: aiohttp.ClientResponse):
    buffer = b""
    async for data in response.content.iter_any():
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            line = line.strip()
            if line:
                yield line
    if buffer.strip():
        yield buffer.strip()


async def lmi(session: aiohttp.ClientSession, url: str, prompt: Prompt, ignore_eos: bool,
              model: str) -> RequestResult:
    body = {"inputs": prompt.text, "stream": True,
            "parameters": {"max_new_tokens": prompt.output_len, "ignore_eos": ignore_eos}}
    if prompt.adapter:
        body["adapters"] = prompt.adapter
    chunks = Chunks(time.perf_counter())
    tokens = 0
    async with session.post(f"{url}/invocations", json=body) as response:
        if response.status != 200:
            return RequestResult(False, error=f"HTTP {response.status}")
        async for line in _lines(response):
            item = json.loads(line[6:] if line.startswith(b"data:") else line)
            if item.get("token"):
                tokens += 1
                chunks.arrived()
    return chunks.result(tokens, len(prompt.token_ids))


async def _openai(session, path: str, body: dict, prompt: Prompt, text_of) -> RequestResult:
    chunks = Chunks(time.perf_counter())
    tokens = 0
    usage = None
    url = path
    async with session.post(url, json=body) as response:
        if response.status != 200:
            return RequestResult(False, error=f"HTTP {response.status}")
        async for line in _lines(response):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            item = json.loads(data)
            if item.get("usage"):
                usage = item["usage"]
            if item.get("choices") and text_of(item["choices"][0]):
                tokens += 1
                chunks.arrived()
    if usage:
        tokens = usage.get("completion_tokens", tokens)
    return chunks.result(tokens, usage.get("prompt_tokens", 0) if usage else len(prompt.token_ids))


async def openai_completions(session, url, prompt: Prompt, ignore_eos: bool, model: str):
    body = {"model": prompt.adapter or model, "prompt": prompt.token_ids or prompt.text,
            "max_tokens": prompt.output_len, "stream": True, "ignore_eos": ignore_eos,
            "temperature": 0, "stream_options": {"include_usage": True}}
    return await _openai(session, f"{url}/v1/completions", body, prompt,
                         lambda choice: choice.get("text"))


async def openai_chat(session, url, prompt: Prompt, ignore_eos: bool, model: str):
    body = {"model": prompt.adapter or model, "messages": [{"role": "user", "content": prompt.text}],
            "max_tokens": prompt.output_len, "stream": True, "ignore_eos": ignore_eos,
            "temperature": 0, "stream_options": {"include_usage": True}}
    return await _openai(session, f"{url}/v1/chat/completions", body, prompt,
                         lambda choice: (choice.get("delta") or {}).get("content"))


def handler(payload: bytes, content_type: str):
    """Non-streaming requests with a fixed body (handler models): TTFT equals E2E."""
    async def call(session, url, prompt: Prompt, ignore_eos: bool, model: str):
        started = time.perf_counter()
        async with session.post(f"{url}/invocations", data=payload,
                                headers={"Content-Type": content_type}) as response:
            await response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                return RequestResult(False, error=f"HTTP {response.status}")
        return RequestResult(True, 0, 1, elapsed, elapsed, [])
    return call


def sagemaker(endpoint_name: str, region: str | None, endpoint_url: str | None):
    """LMI streaming through boto3's invoke_endpoint_with_response_stream."""
    import boto3

    client = boto3.client("sagemaker-runtime", region_name=region, endpoint_url=endpoint_url)

    def blocking(prompt: Prompt, ignore_eos: bool) -> RequestResult:
        body = json.dumps({"inputs": prompt.text, "stream": True, "parameters": {
            "max_new_tokens": prompt.output_len, "ignore_eos": ignore_eos}})
        chunks = Chunks(time.perf_counter())
        reply = client.invoke_endpoint_with_response_stream(
            EndpointName=endpoint_name, Body=body, ContentType="application/json")
        buffer, tokens = b"", 0
        for event in reply["Body"]:
            buffer += event.get("PayloadPart", {}).get("Bytes", b"")
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip() and json.loads(line).get("token"):
                    tokens += 1
                    chunks.arrived()
        return chunks.result(tokens, len(prompt.token_ids))

    async def call(session, url, prompt: Prompt, ignore_eos: bool, model: str):
        return await asyncio.to_thread(blocking, prompt, ignore_eos)
    return call


BACKENDS = {"lmi": lmi, "openai-completions": openai_completions, "openai-chat": openai_chat}

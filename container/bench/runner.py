"""Drive a backend with N concurrent users or a request rate (Poisson arrivals)."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp

from .metrics import RequestResult


async def _guarded(call, *args) -> RequestResult:
    try:
        return await call(*args)
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}"[:200])


async def run(call, url: str, prompts, concurrency: int | None = None,
              request_rate: float = float("inf"), ignore_eos: bool = True, model: str = "model",
              seed: int = 0) -> tuple[list[RequestResult], float]:
    limit = concurrency or len(prompts)
    connector = aiohttp.TCPConnector(limit=limit + 8, force_close=False)
    timeout = aiohttp.ClientTimeout(total=3600, sock_read=600)
    rng = random.Random(seed)
    gate = asyncio.Semaphore(limit)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(prompt):
            async with gate:
                return await _guarded(call, session, url, prompt, ignore_eos, model)

        started = time.perf_counter()
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(one(prompt)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - started

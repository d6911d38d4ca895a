"""An async handler: several requests are in flight on the worker at once."""
import asyncio

from djl_python import Input, Output


async def handle(inputs: Input):
    if inputs.is_empty():
        return None
    data = inputs.get_as_json()
    await asyncio.sleep(float(data.get("delay", 0)))
    return Output().add_as_json({"async_echo": data})

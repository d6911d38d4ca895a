"""A rolling-batch handler in DJL's protocol: called again and again with every request in
flight; one {"data", "last"} item per batch index; keeps its own per-request state in order."""

import json
import time

from djl_python import Input, Output


class _Request:
    def __init__(self, prompt: str, steps: int):
        self.prompt, self.steps, self.sent = prompt, steps, 0

    def next_piece(self) -> str:
        self.sent += 1
        return f"{self.prompt}:{self.sent} "

    @property
    def done(self) -> bool:
        return self.sent >= self.steps


class _Service:
    def __init__(self):
        self.requests: list[_Request] = []
        self.batch_sizes: list[int] = []

    def step(self, inputs: Input) -> Output:
        batch = inputs.get_batches()
        if len(batch) < len(self.requests):
            raise ValueError("the server sent fewer requests than are in flight")
        for item in batch[len(self.requests):]:
            body = item.get_as_json()
            if body.get("fail"):
                return Output().error("asked to fail the whole batch")
            self.requests.append(_Request(body["inputs"], int(body["parameters"]["steps"])))
        self.batch_sizes.append(len(batch))
        time.sleep(0.02)
        outputs = Output()
        for index, request in enumerate(self.requests):
            piece = {"data": request.next_piece(), "last": request.done}
            if request.done:
                piece["data"] += "|" + json.dumps({"max_batch_seen": max(self.batch_sizes)})
            outputs.add_as_json(piece, batch_index=index)
        self.requests = [r for r in self.requests if not r.done]
        return outputs


_service = _Service()


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    return _service.step(inputs)

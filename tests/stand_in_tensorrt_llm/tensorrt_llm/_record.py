"""STAND-IN: append one JSON line per call to $STAND_IN_TRTLLM_RECORD (when it is set)."""

import dataclasses
import enum
import json
import os
import time


def jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return {"type": type(value).__name__}


def record(event: str, **data) -> None:
    path = os.environ.get("STAND_IN_TRTLLM_RECORD")
    if not path:
        return
    line = {"event": event, "pid": os.getpid(), "time": time.time(),
            "mpi_rank": os.environ.get("OMPI_COMM_WORLD_RANK"), **jsonable(data)}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")

"""A handler that fails on demand: raise, Output.error, MemoryError, hang, wrong batch size."""
import resource
import time

from djl_python import Input, Output


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    request = inputs.get_batches()[0].get_as_json()
    action = request.get("action")
    if action == "raise":
        raise ValueError("the handler refused this input")
    if action == "error":
        return Output().error("custom failure message", code=424)
    if action == "memory":
        raise MemoryError("pretend the model ran out of memory")
    if action == "exhaust":
        exhaust_memory()
    if action == "sleep":
        time.sleep(float(request.get("seconds", 1)))
    if action == "mismatch":
        out = Output()
        out.add_as_json({"only": "one"}, batch_index=0)
        return out
    out = Output()
    for index, _ in enumerate(inputs.get_batches()):
        if inputs.is_batch():
            out.add_as_json({"ok": True}, batch_index=index)
        else:
            out.add_as_json({"ok": True, "slept": request.get("seconds")})
    return out


def exhaust_memory():
    """Really run out of memory: cap the address space a little above what is in use, then
    allocate until the allocator fails (MemoryError), and lift the cap again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (in_use + (256 << 20), hard))
    try:
        hoard = []
        while True:
            hoard.append(bytearray(16 << 20))
    finally:
        hoard = None
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

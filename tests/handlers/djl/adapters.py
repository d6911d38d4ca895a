"""DJL's adapter hooks: register / update / unregister, and requests naming an adapter."""

from djl_python import Input, Output

registered: dict[str, dict] = {}


def register_adapter(inputs: Input):
    properties = inputs.get_properties()
    if "fail" in properties["src"]:
        raise ValueError("cannot read adapter weights")
    if "oom" in properties["src"]:
        raise MemoryError("no room for the adapter")
    if "refuse" in properties["src"]:
        return Output().error("refused by the handler", code=424)
    registered[properties["name"]] = dict(properties)
    return Output().add("registered")


def update_adapter(inputs: Input):
    registered[inputs.get_properties()["name"]].update(inputs.get_properties())
    return Output().add("updated")


def unregister_adapter(inputs: Input):
    del registered[inputs.get_properties()["name"]]
    return Output().add("unregistered")


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    outputs = Output()
    for index, item in enumerate(inputs.get_batches()):
        text = item.get_as_string("data") if item.contains_key("data") else ""
        adapter = item.get_as_string("adapter") if item.contains_key("adapter") else None
        known = registered.get(adapter) if adapter else None
        outputs.add_as_json({"text": text, "adapter": adapter,
                             "src": known and known["src"],
                             "pin": known and known["pin"],
                             "rank": known and known.get("rank")}, batch_index=index)
    return outputs

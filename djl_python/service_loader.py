"""Load a handler module (model.py or an importable module) and call its functions."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from typing import Callable, Optional

log = logging.getLogger(__name__)


class ModelService:
    def __init__(self, module, model_dir):
        self.module = module
        self.model_dir = model_dir

    def invoke_handler(self, function_name, inputs):
        inputs.properties["model_dir"] = self.model_dir
        return getattr(self.module, function_name or "handle")(inputs)

    async def invoke_handler_async(self, function_name, inputs):
        inputs.properties["model_dir"] = self.model_dir
        return await getattr(self.module, function_name or "handle")(inputs)


def _module_name(path: str, namespace: str | None) -> str:
    # A unique name per file (or per namespace) so two model.py files do not replace each other.
    if namespace:
        return "ns_" + namespace.replace("-", "_").replace(".", "_")
    return "model_" + hashlib.md5(path.encode()).hexdigest()[:8]


def _load_file(path: str, namespace: str | None):
    name = _module_name(path, namespace)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_model_service(model_dir, entry_point, device_id=None, namespace=None) -> ModelService:
    """entry_point: an absolute .py path, a .py file in model_dir, or a module name."""
    if os.path.exists(os.path.join(model_dir, "MAR-INF", "MANIFEST.json")):
        raise ValueError("TorchServe model archives (MAR-INF/MANIFEST.json) are not supported")
    entry_point = str(entry_point)
    if os.path.isabs(entry_point) or entry_point.endswith(".py"):
        path = entry_point if os.path.isabs(entry_point) else os.path.join(model_dir, entry_point)
        if not os.path.exists(path):
            raise ValueError(f"entry-point file not found {path}.")
        module = _load_file(path, namespace)
    else:
        module = importlib.import_module(entry_point)
    return ModelService(module, model_dir)


def has_function_in_module(module, function_name) -> bool:
    return callable(getattr(module, function_name, None))


def is_valid_dir(dir_path: str) -> bool:
    """True when the folder that would hold dir_path exists."""
    return os.path.exists(os.path.dirname(dir_path))


def find_decorated_function(module, decorator_attribute: str) -> Optional[Callable]:
    """The first function of the module that a decorator marked with decorator_attribute."""
    for name in dir(module):
        obj = getattr(module, name)
        if callable(obj) and getattr(obj, decorator_attribute, False):
            return obj
    return None


def get_annotated_function(model_dir: str, decorator_attribute: str,
                           namespace: str | None = None) -> Optional[Callable]:
    """The function of model_dir/model.py marked with decorator_attribute, if any."""
    try:
        service = load_model_service(model_dir, "model.py", -1, namespace=namespace)
    except ValueError:
        return None             # no model.py: the caller keeps its default
    function = find_decorated_function(service.module, decorator_attribute)
    if function is not None:
        log.info("Found decorated function: %s for %s", function.__name__, decorator_attribute)
    return function

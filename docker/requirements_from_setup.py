"""Print setup.py's install_requires, one a line, so an image caches its dependencies in a layer
of their own (rebuilt only when setup.py changes, not on every source change)."""
import sys

import setuptools

captured = {}
setuptools.setup = lambda **kwargs: captured.update(kwargs)
path = sys.argv[1] if len(sys.argv) > 1 else "setup.py"
exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
print("\n".join(captured.get("install_requires", [])))

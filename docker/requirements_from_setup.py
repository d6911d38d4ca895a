"""Print setup.py's install_requires (and the named extras' requirements), one a line, so an
image caches its dependencies in a layer of their own: rebuilt when setup.py changes, not on
every source change.   python requirements_from_setup.py setup.py [EXTRA ...]"""
import sys

import setuptools

captured = {}
setuptools.setup = lambda **kwargs: captured.update(kwargs)
path = sys.argv[1] if len(sys.argv) > 1 else "setup.py"
exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
requirements = list(captured.get("install_requires", []))
for extra in sys.argv[2:]:
    if extra not in captured.get("extras_require", {}):
        sys.exit(f"requirements_from_setup: setup.py has no extra {extra!r}")
    requirements += captured["extras_require"][extra]
print("\n".join(requirements))

"""The backends never import a front-end module, so the runtime's dependencies run one way (DESIGN §4)."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import runtime.backends

RUNTIME_DIR = Path(runtime.__file__).parent
NEUTRAL = {"runtime.backends", "runtime.errors", "runtime.opkinds", "runtime.device"}  # shared by both sides

# In a fresh interpreter, ``runtime`` is an empty package (its __init__ imports the front-end), then each
# backend module is imported; prints, per module, the runtime modules outside the backends it loaded.
PROBE = """
import importlib, json, sys, types
package = types.ModuleType("runtime")
package.__path__ = [sys.argv[1]]
sys.modules["runtime"] = package
loaded = {}
for name in sys.argv[2:]:
    importlib.import_module(name)
    loaded[name] = sorted(m for m in sys.modules if m.startswith("runtime.") and not m.startswith("runtime.backends."))
print(json.dumps(loaded))
"""


def test_backend_modules_load_no_front_end_module():
    names = ["runtime.backends", *(f"runtime.backends.{m.name}" for m in pkgutil.iter_modules(runtime.backends.__path__))]
    assert {"runtime.backends.host", "runtime.backends.cuda", "runtime.backends.interface"} <= set(names)
    done = subprocess.run([sys.executable, "-c", PROBE, str(RUNTIME_DIR), *names], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    front_end = {name: sorted(set(mods) - NEUTRAL) for name, mods in loaded.items()}
    assert front_end == {name: [] for name in names}


def test_both_backends_implement_the_interface():
    from runtime.backends import cuda, host, interface

    for backend in (host.HostBackend, cuda.CudaBackend):
        assert issubclass(backend, interface.Backend) and not backend.__abstractmethods__
        assert issubclass(backend.Stream, interface.Stream) and issubclass(backend.Event, interface.Event)
    for made in (host.HostFlag, cuda.CudaFlag):
        assert issubclass(made, interface.Flag) and not made.__abstractmethods__
    for made in (host.HostGraph, cuda.CudaGraph):
        assert issubclass(made, interface.Graph) and not made.__abstractmethods__

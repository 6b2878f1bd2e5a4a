"""rsvl_runtime must import and run with torch absent (it is what users deploy)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys, importlib.abc
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
""")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_runtime_imports_without_torch() -> None:
    r = run_without_torch("""
        import rsvl_runtime, rsvl_runtime.cli, rsvl_runtime.scene, rsvl_runtime.outputs, rsvl_runtime.raster_io
        import rsvl_runtime.backends.onnxruntime_backend, rsvl_runtime.backends.tensorrt
        import rsvl_runtime.backends.tensorrt.session, rsvl_runtime.backends.tensorrt.build
        import rsvl_runtime.backends.tensorrt.validity
        import sys
        assert "torch" not in sys.modules
        try:
            import torch
        except ImportError:
            print("blocked-ok")
    """)
    assert r.returncode == 0, r.stderr
    assert "blocked-ok" in r.stdout

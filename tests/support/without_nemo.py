"""Run a script in a fresh interpreter in which NeMo Guardrails cannot be imported, for the tests that show an
integration needs none: nothing the test session imported can help, and any import of ``nemoguardrails`` (or a
submodule) fails as if the package were not installed.

The script ends with ``report(key=value, …)``, which prints its findings as a JSON line with ``nemo`` added, the
``nemoguardrails`` modules the script ended up with (``[]`` when the integration imported none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

_PRELUDE = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoNemo(importlib.abc.MetaPathFinder):
        """Any import of nemoguardrails (or a submodule) fails, as if the package were not installed."""
        def find_spec(self, name, path=None, target=None):
            if name == "nemoguardrails" or name.startswith("nemoguardrails."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoNemo())
    try:
        import nemoguardrails  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    def report(**found):
        """The script's findings, with the NeMo modules it ended up with, as the JSON line the test reads."""
        found["nemo"] = sorted(m for m in sys.modules if m.split(".")[0] == "nemoguardrails")
        print(json.dumps(found))
''')


def run_without_nemo(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``script`` (dedented; it sees ``sys.argv[1:] == args`` and ends with ``report(…)``) with NeMo Guardrails
    unimportable and this checkout first on the path; returns what it reported, plus ``nemo``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(script), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


__all__ = ["ROOT", "run_without_nemo"]

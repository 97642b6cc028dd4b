"""``nemo-csr-rail path``: where the package lives, for ``import_paths`` / ``COLANGPATH`` with editable installs.

NeMo Guardrails resolves ``import_paths: [nemo_csr_rail]`` only inside the site-packages that holds
``nemoguardrails`` (or ``$COLANGPATH``); an editable install lives elsewhere, hence this helper.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import nemo_csr_rail


def add_parser(sub: Any) -> None:
    p = sub.add_parser("path", help="print the package directory (for COLANGPATH or an absolute import_paths entry)")
    p.add_argument("--colangpath", action="store_true", help="print the COLANGPATH value instead (its parent)")


def run(args: argparse.Namespace) -> int:
    d = nemo_csr_rail.package_dir()
    print(os.path.dirname(d) if args.colangpath else d)
    return 0

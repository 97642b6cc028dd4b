"""Entry point of ``nemo-csr-rail``. Each sub-command lives in its own module exposing ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command name -> module (imported lazily so `nemo-csr-rail path` never imports torch or NeMo)
COMMANDS: dict[str, str] = {
    "demo": "nemo_csr_rail.cli.demo_cmd",
    "serve": "nemo_csr_rail.cli.serve_cmd",
    "doctor": "nemo_csr_rail.cli.doctor_cmd",
    "check": "nemo_csr_rail.cli.check_cmd",
    "eval": "nemo_csr_rail.cli.eval_cmd",
    "path": "nemo_csr_rail.cli.path_cmd",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemo-csr-rail",
        description="Nemotron-Content-Safety-Reasoning-4B rails for NeMo Guardrails.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"see: nemo-csr-rail {name} --help", add_help=False)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("nemo_csr_rail"):
                continue  # command not shipped in this build
            raise
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(args_list)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod = importlib.import_module(COMMANDS[args.command])
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

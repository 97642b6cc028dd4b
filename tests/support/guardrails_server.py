"""`nemoguardrails server` for one config, bound to 127.0.0.1 (the CLI itself hard-codes 0.0.0.0)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    """The environment a subprocess needs to import this checkout and resolve ``import_paths: [nemo_csr_rail]``."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    e["COLANGPATH"] = str(ROOT)
    return e


@contextmanager
def guardrails_server(config_dir: Path, log_path: Path | None = None) -> Iterator[str]:
    """Serve ``config_dir`` exactly as ``nemoguardrails server --config DIR`` would; yields the base URL.

    ``config_dir`` holding a ``config.yml`` serves that one config; a folder of config folders serves each under
    its folder name (``guardrails.config_id``). The server runs verbose (NeMo logs every event, ~15 KB a turn):
    with ``log_path`` its output goes to that file, else to a pipe nobody reads once it has started, which is
    fine for a handful of requests but blocks the server when the pipe (64 KB) is full."""
    port = free_port()
    code = ("import uvicorn; from nemoguardrails.server import api; "
            f"api.app.rails_config_path = {str(config_dir)!r}; "
            f"uvicorn.run(api.app, host='127.0.0.1', port={port}, log_level='warning')")
    log = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env(), stdout=log or subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/v1/rails/configs", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                out = Path(log_path).read_bytes() if log_path is not None else proc.stdout.read()  # type: ignore[union-attr]
                raise RuntimeError(out.decode(errors="replace"))
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        if log is not None:
            log.close()

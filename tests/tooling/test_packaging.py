"""The wheel carries everything NeMo Guardrails needs to load the plugin from `import_paths: [nemo_csr_rail]`."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(proc.stdout + proc.stderr)
    (whl,) = out.glob("nemo_csr_rail-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("nemo_csr_rail/rail/flows.co", "nemo_csr_rail/rail/flows.v1.co", "nemo_csr_rail/rail/rail.py",
              "nemo_csr_rail/actions.py", "nemo_csr_rail/config.py", "nemo_csr_rail/py.typed", "nemo_csr_rail/cli/main.py"):
        assert f in names, f
    assert not any(n.startswith(("tests/", "example_configs/")) for n in names)
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Dist: nemoguardrails<0.25,>=0.24.1" in text
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "nemo-csr-rail = nemo_csr_rail.cli.main:main" in entry
    for f in ("nemo_csr_rail/telemetry/__init__.py", "nemo_csr_rail/telemetry/facade.py",
              "nemo_csr_rail/telemetry/metrics.py", "nemo_csr_rail/telemetry/audit.py",
              "nemo_csr_rail/telemetry/tracing.py"):
        assert f in names, f
    assert "Provides-Extra: telemetry" in text
    assert 'Requires-Dist: prometheus-client>=0.20; extra == "telemetry"' in text
    assert 'Requires-Dist: opentelemetry-api>=1.20; extra == "telemetry"' in text
    # the LangChain integration's extra: the versions tested, up to the next major
    assert "Provides-Extra: langchain" in text
    for dist in ("langchain-core<2,>=1.8.3", "langchain<2,>=1.5.2", "langgraph<2,>=1.2.24"):
        assert f'Requires-Dist: {dist}; extra == "langchain"' in text, dist


def test_installed_wheel_layout_loads_in_guardrails(wheel, tmp_path, guard, main_llm):
    """Unpacked like site-packages (no checkout on sys.path), the config's one import line is enough."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    from tests.support.rails_configs import write_config

    cfg = write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url,
                       plugin={"policies": {"p": {"policy": "No politics."}}},
                       input_flows=['csr check input $policy="p"'])
    code = ("import asyncio, nemo_csr_rail; from nemoguardrails import LLMRails, RailsConfig; "
            f"assert nemo_csr_rail.__file__.startswith({str(site)!r}), nemo_csr_rail.__file__; "
            f"r = LLMRails(RailsConfig.from_path({str(cfg)!r})); "
            "print(asyncio.run(r.generate_async(messages=[{'role':'user','content':'vote politics?'}]))['content'])")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(site)
    env["COLANGPATH"] = str(site)  # what site-packages is for a regular install
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "policy forbids" in proc.stdout


def test_path_command_gives_the_colangpath_for_editable_installs():
    """The README's editable-install recipe: `export COLANGPATH=$(nemo-csr-rail path --colangpath)`."""
    run = [sys.executable, "-m", "nemo_csr_rail.cli.main", "path"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pkg = subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout.strip()
    colangpath = subprocess.run([*run, "--colangpath"], capture_output=True, text=True, env=env,
                                check=True).stdout.strip()
    assert Path(pkg) == ROOT / "nemo_csr_rail" and (Path(pkg) / "rail" / "flows.co").is_file()
    assert Path(colangpath) == ROOT  # the folder that holds nemo_csr_rail/, as import_paths needs


def test_code_needs_no_python_newer_than_requires_python():
    """``requires-python`` says 3.10, but CI hosts only have 3.11: vermin reads every module (stdlib APIs included)
    and fails if anything needs a newer Python than the declared floor."""
    assert 'requires-python = ">=3.10"' in (ROOT / "pyproject.toml").read_text()
    proc = subprocess.run([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations", "-t=3.10-",
                           "--eval-annotations", "nemo_csr_rail", "benchmarks", "tools", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command_verbatim():
    """CI must run what the README tells a user to run, not a private variant of it."""
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    (test_cmd,) = [ln.split("#", 1)[0].strip() for ln in quickstart.splitlines() if "test" in ln.split("#", 1)[0]]
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [test_cmd] == ["./tools/test.sh"]

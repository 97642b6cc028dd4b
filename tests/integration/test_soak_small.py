"""A small soak (no timing asserts): every check under random faults ends in a decision, nothing leaks.

The full benchmark is ``benchmarks/soak.py`` (10,000 checks, 256 in flight); figures are in docs/reliability.md.
"""

from __future__ import annotations

from benchmarks.soak import run_soak, start_server


async def test_small_soak_every_check_decides_and_nothing_leaks() -> None:
    proc, url = start_server(0.05)
    try:
        res = await run_soak(url, n=600, concurrency=64, timeout_s=2.0)
    finally:
        proc.terminate()
        proc.wait(10)
    assert res["escaped"] == 0, res["escaped_examples"]
    assert res["decided"] == 600
    assert sum(res["decisions"].values()) == 600
    assert res["fds_after"] <= res["fds_before"] + 2, res
    assert res["tasks_after"] <= res["tasks_before"], res
    assert any(k.endswith(":verdict") for k in res["decisions"])
    assert any(not k.endswith(":verdict") for k in res["decisions"]), "faults were injected and decided"

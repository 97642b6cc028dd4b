"""Loaded by NeMo Guardrails from ``import_paths: [nemo_csr_rail]`` (it executes ``<dir>/actions.py`` standalone).

The actions live with the rest of the NeMo adapter in :mod:`nemo_csr_rail.rail.actions`; this file only makes the
import path find them.
"""

from nemo_csr_rail.rail.actions import (
    csr_check_input,
    csr_check_output,
    csr_check_retrieval,
    csr_check_tool_calls,
    csr_check_tool_results,
)

__all__ = ["csr_check_input", "csr_check_output", "csr_check_retrieval", "csr_check_tool_calls",
           "csr_check_tool_results"]

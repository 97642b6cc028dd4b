"""Evaluation harness: labelled datasets → guard verdicts → metrics, reports and plots (``nemo-csr-rail eval``).

One module per job: :mod:`.datasets` (loaders registry), :mod:`.runner` (bounded-concurrency, resumable scoring),
:mod:`.metrics`, :mod:`.report` (``report.json`` / ``report.md``) and :mod:`.plots` (PNG, needs matplotlib).
"""

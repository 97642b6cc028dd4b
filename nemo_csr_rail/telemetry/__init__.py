"""Operations telemetry: Prometheus metrics, a JSONL audit trail and OpenTelemetry spans, one record per check.

Switched on by ``custom_data.nemo_csr_rail.telemetry`` and installed with the ``telemetry`` extra (:func:`nemo_csr_rail.options.install_hint`).
The runtime calls :class:`~nemo_csr_rail.telemetry.facade.CheckTelemetry` once per check; nothing else in the
pipeline knows telemetry exists. The submodules import their third-party packages at import time, so importing
this package's *submodules* needs the extra; this ``__init__`` imports nothing and is safe without it.

- :mod:`.metrics`: the process-wide Prometheus registry and its ``/metrics`` endpoint;
- :mod:`.audit`: one background writer per audit file, off the check's path, rotation-safe;
- :mod:`.tracing`: the ``csr.check`` span, its ``gen_ai.evaluation.result`` event, W3C trace headers;
- :mod:`.facade`: what the runtime calls, and the hook the HTTP engine reports its requests to.
"""

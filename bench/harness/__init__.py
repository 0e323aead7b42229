"""The benchmark harness behind ``bench/run.py`` and ``bench/workload.py``, one module per concern.

- ``common``: paths, constants, the log line, `BenchError`.
- ``processes``, ``procfs``: starting and stopping what the harness runs; reading /proc.
- ``litellm_install``, ``systems``: the systems under test (mock, sluicegate, LiteLLM).
- ``wrk``, ``measure``: wrk scripts and output; one measured run with its CPU and memory.
- ``scenarios``, ``cache_cells``: the phases and their cells.
- ``record``, ``summary``, ``targets``, ``cache_report``, ``report``, ``environment``:
  RESULTS.md and results.json.
- ``cli``: the flags and ``main`` of ``bench/run.py``.
- ``workload_stack``, ``workload_report``: the systems and the report of ``bench/workload.py``.
"""

"""Test doubles for llenergymeasure: not production code, never used by a measurement.

They live inside the package (rather than under ``tests/``) so that the child processes a study
spawns can import them by name: a worker function or engine factory sent to a spawned child is
pickled by reference to its module.

- ``testing.energy``: ``FakeGpuSensor``, ``FakeClock``, ``FakeNvmlModule`` (a pynvml-like
  module), ``FakeZeusMonitor``, ``FakeCodeCarbonTracker``, ``FakeEnergyBackend``.
- ``testing.engines``: ``FakeEngine`` and ``FakeTokenizer`` (an ``InferenceBackend`` without
  torch).
- ``testing.study``: picklable study workers (``fake_measure_worker``, ``ScriptedWorker``).

No production module imports this package; ``tests/unit/test_architecture.py`` enforces it.
"""

"""Where a run's joules go (issue 16): the prefill/decode split, measured two ways.

- ``differential``: ``PhaseSplit`` and its arithmetic, from the full window and a
  prefill-only twin (``max_new_tokens`` 1);
- ``prefill_window``: measuring that prefill-only window after the measurement window;
- ``timeline``, ``curves``, ``attribution``: the time-resolved split, i.e. the window's
  energy shared over engine steps, requests and phases (the rule is in ``attribution``);
- ``records``: that split from a run's request records and sampler samples;
- ``columns``: the flat-table columns of both splits and the energy components.

Floor 2 (with ``energy``, ``engines``, ``results``): the result models hold a ``PhaseSplit``
and an ``EnergyAttribution``, so nothing here imports ``results``. The harness runs the
pieces (``harness.orchestrator``, ``harness.assemble``); the report draws them
(``report.phase_section``, ``report.phase_plots``).
"""

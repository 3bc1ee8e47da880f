"""PyTorch / transformers inference engine.

Modules: ``engine`` (``PyTorchBackend``: load, effective values, prepare / execute / records,
device housekeeping), ``engine_args`` (defaults, ``generate`` arguments, the serve command),
``loading`` (the steps of ``load``), ``preflight``, ``model_files`` (where the model comes
from), ``passthrough`` (how ``passthrough_kwargs`` are sorted) and ``batching`` (batches, the
step timer, output counts and records). Importing any of them imports neither
torch nor transformers: both are imported inside functions.

How a run works (``prepare`` -> ``execute`` -> ``records``, see ``engines.base``):

- ``prepare`` (before the energy window): prompts are tokenised once and grouped into batches of
  ``pytorch.batch_size`` (default 1). ``static`` batching keeps dataset order; ``dynamic`` sorts
  prompts by token length first (length-sorted buckets, less padding). Batches are left-padded
  with an attention mask and moved to the device, each with its generate arguments and its own
  step timer.
- ``execute`` (inside the window): one ``model.generate`` call per batch, the batch's start read
  on two clocks, its generated ids copied to the host (which waits for the batch to finish), and
  nothing else. ``records`` (after the window): output counts, per-token times and one
  ``RequestRecord`` per prompt.
- Each batch is one ``model.generate`` call. Its ``max_new_tokens`` is the largest limit of the
  requests in it (a prompt's own ``max_new_tokens`` overrides ``config.max_new_tokens``); each
  request's counted output is then trimmed to its own limit. With ``decoder.ignore_eos`` the
  batch is forced to that full length (``min_new_tokens = max_new_tokens``).
- ``output_tokens`` counts generated tokens up to and including the first EOS (padding after it
  is never counted). ``latency_s`` is the time from the start of the batch's ``generate`` call to
  the return of its sequences: in static batching every request of a batch is delivered when the
  batch completes. ``ttft_s`` is the time to the batch's first generated token; ``itl_s`` are the
  gaps between this request's successive tokens, up to its last counted token.
- Per-token times come from a streamer (``batching.StepTimer``) that records one
  ``perf_counter`` per decoding step (and keeps a reference to the step's token tensor, read
  after the window) and does nothing else. transformers already moves each step's new tokens to the
  host (one small ``[batch]`` copy, at a point where the loop synchronises anyway to check for
  EOS), so the timer adds no device synchronisation. Beam search cannot stream in transformers:
  its records carry ``ttft_s=None`` and no ``itl_s``.
- Each batch's start is also read on ``time.monotonic`` (``RequestRecord.start_s``), the
  energy sampler's clock, so per-token times can be placed on the power timeline for the
  time-resolved energy attribution (``perf_counter`` measures the durations; on Linux both
  read ``CLOCK_MONOTONIC``, so the offsets added to ``start_s`` are on the same clock).

Feature notes:

- ``torch_compile``: transformers' own compile path (``cache_implementation="static"``, compile
  on the first decoding step of the first ``generate``, on accelerators only). Compilation
  therefore happens during warmup; the orchestrator forces one warmup run when
  ``torch_compile`` is on and ``n_warmup`` is 0, and records the first warmup run's excess
  latency as ``timing.compile_s`` (see ``harness/orchestrator.py``).
- ``num_processes > 1`` runs through ``engines.data_parallel.DataParallelEngine``, which spawns one
  ``PyTorchBackend(device=...)`` replica per GPU; a ``PyTorchBackend`` itself is one process.
- Speculative decoding: ``LoadInfo.draft_parameter_count`` carries the draft model's size so
  the FLOPs estimate counts both models.
"""

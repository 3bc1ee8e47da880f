"""vLLM inference engine on the offline ``vllm.LLM`` API.

Modules: ``engine`` (``VLLMBackend``: pre-flight, load, effective values, prepare / execute /
records), ``engine_args`` (config -> ``vllm.LLM`` arguments, documented defaults, the ``vllm
serve`` command), ``model_files`` (the model path vLLM is given, GGUF header and plugin,
parameter count), ``step_loop`` (the engine loop and its per-token timing), ``beam_search``
and ``metrics`` (request timings of one ``LLM.generate`` call, prefix-cache counters).
Importing any of them imports neither vllm nor torch: both are imported inside functions.

Targets vLLM 0.26 (the ``[vllm]`` extra pins ``vllm==0.26.*``; ``llem run`` with 0.26.0 ran on
an H200). Public API used (``vllm/entrypoints/llm.py``: ``LLM(model, *,
tensor_parallel_size, dtype, quantization, seed, gpu_memory_utilization, **EngineArgs)``,
``LLM.generate(prompts, sampling_params, *, use_tqdm, lora_request)``,
``LLM.beam_search(prompts, BeamSearchParams, lora_request)``; ``vllm.sampling_params``
``SamplingParams`` / ``BeamSearchParams(beam_width, max_tokens, ignore_eos, temperature,
length_penalty)``; ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``;
``RequestOutput.metrics``: ``RequestStateStats`` in the V1 engine, ``RequestMetrics`` in V0;
``LLM.reset_prefix_cache()``; ``LLM.get_metrics()``), plus the V1 engine loop that
``LLM.generate`` itself runs (``llm_engine.add_request`` / ``step`` /
``has_unfinished_requests``, ``SamplingParams.output_kind``; ``llm_engine.engine_core.get_output``
returning ``EngineCoreOutputs(outputs, timestamp)``). The CPU tests run against a fake
``vllm`` package that follows these signatures.

How a run works (``prepare`` -> ``execute`` -> ``records``, see ``engines.base``):

- Config -> engine arguments (``engine_args.build_engine_args``): every ``vllm:`` field is
  passed under its own name when set; ``None`` is not passed, so vLLM's own default applies,
  and the effective value is read back from the engine config after load
  (``llm.llm_engine.vllm_config``), else the documented default in ``VLLM_DEFAULTS`` is
  recorded (with its source).
- ``precision`` -> ``dtype`` (fp16 -> float16, bf16 -> bfloat16). int4 / int8 need a quantized
  checkpoint and a method: int4 -> ``vllm.quantization: awq | gptq``; int8 ->
  ``vllm.quantization: gptq`` (8-bit GPTQ checkpoint); activations then run in float16.
  ``vllm.quantization: fp8`` is allowed with fp16 / bf16 (fp8 weights, 16-bit activations).
- ``prepare`` (before the window) builds the sampling parameters and request ids. ``execute``
  (inside it) adds all prompts to the engine at once, each rendered by vLLM's front end as it
  is added (vLLM schedules them itself, up to ``max_num_seqs`` at a time), and steps the engine
  until they finish, the loop ``LLM.generate`` runs, with its ``FINAL_ONLY`` outputs; a
  reference to each step's engine-core iteration (``EngineCoreOutputs``: its ``timestamp`` and
  every request's new tokens) is kept on its way through ``engine_core.get_output``.
  ``records`` (after the window) gives each token the engine core's time of the iteration that
  produced it: true per-request TTFT and every inter-token gap (``step_loop``: ``run_steps``,
  ``CoreIterationLog``, ``step_records``; where the iterations cannot be read, ``DELTA``
  outputs stamped as each step returns). Where the engine has no such loop, one
  ``LLM.generate`` call runs instead (timings from the request metrics).
  One ``SamplingParams`` per prompt: greedy = temperature 0;
  sampling = temperature/top_p/top_k (-1 = off)/repetition_penalty/seed; ``max_tokens`` is the
  prompt's own limit or the experiment's; ``ignore_eos`` sets ``ignore_eos=True`` and
  ``min_tokens=max_tokens``.
- Beam search goes through ``LLM.beam_search`` (one call per distinct ``max_tokens``); its
  records carry no TTFT/ITL (vLLM drives beam search one step at a time from Python).
- LoRA: one ``LoRARequest("llem-adapter", 1, <adapter path or hub id>)`` per request.
- Speculative decoding: ``speculative_config={"model": draft_model,
  "num_speculative_tokens": 5}`` (``passthrough_kwargs.num_speculative_tokens`` overrides 5).
- Fallback timings (one ``LLM.generate`` call) come from ``RequestOutput.metrics``: V1
  ``first_token_latency`` (TTFT) and
  ``last_token_ts - first_token_ts`` (decode time); V0 ``first_token_time - arrival_time`` and
  ``last_token_time - first_token_time``. vLLM records only the first and last token times, so
  each request's ``itl_s`` holds its mean inter-token interval, once per gap. Where metrics are
  missing, TTFT/ITL are None/empty, latency is the wall time of the whole call, and a note says so.
  ``disable_log_stats=False`` is passed so that the V1 engine collects them.
"""

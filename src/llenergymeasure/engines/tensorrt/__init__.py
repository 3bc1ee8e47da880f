"""TensorRT-LLM inference engine: the TensorRT-engine flavour of TensorRT-LLM 1.2's LLM API.

Modules: ``engine`` (``TensorRTBackend``: pre-flight, load, effective values, generation),
``build`` (compile-time fields, defaults, quantization, ``LLM(...)`` arguments, the engine
cache) and ``streaming`` (per-token timing from streamed responses). Importing any of them
imports neither tensorrt_llm nor torch: both are imported inside functions.

Targets TensorRT-LLM 1.2.x (the ``[tensorrt]`` extra pins ``tensorrt-llm==1.2.*``); pre-flight
refuses any other release. Not verified on hardware: the tests run against a fake
``tensorrt_llm`` package (``tests/fakes/tensorrt_llm``) that follows the 1.2 API below.

Which ``LLM``: since 1.0 ``tensorrt_llm.LLM`` is the PyTorch backend (it builds no engine and
refuses TensorRT-only arguments such as ``build_config``); the engine-building class is
``tensorrt_llm._tensorrt_engine.LLM`` (``tensorrt_llm.llmapi.llm._TrtLLM``), whose arguments are
checked against ``TrtLlmArgs``: an unknown keyword is a ``ValueError``. The calls used:

- ``LLM(model, tokenizer=None, ..., tensor_parallel_size=1, dtype="auto", **kwargs)`` with
  ``pipeline_parallel_size``, ``build_config`` (``BuildConfig(max_batch_size=..,
  max_seq_len=..)``), ``quant_config`` (``QuantConfig(quant_algo=QuantAlgo.X)``) and
  ``kv_cache_config`` (``KvCacheConfig(enable_block_reuse=.., free_gpu_memory_fraction=..)``);
  ``BuildConfig``, ``QuantConfig``, ``QuantAlgo`` and ``KvCacheConfig`` come from
  ``tensorrt_llm.llmapi``. A folder holding a built engine is loaded with
  ``LLM(model=engine_dir, tokenizer=hf_model)`` (its build config comes from the engine).
- ``LLM.save(engine_dir)`` copies the engine it built; ``LLM.tokenizer``; ``LLM.shutdown()``.
- ``tensorrt_llm.SamplingParams`` (keyword-only): ``max_tokens``, ``top_k`` (None = all
  logits, so greedy is ``top_k=1``), ``top_p``, ``temperature``, ``seed``, ``min_tokens``,
  ``repetition_penalty``, ``ignore_eos``.
- ``LLM.generate_async(inputs, sampling_params=.., streaming=True)``: a ``RequestOutput`` that
  is an async iterator; each item is the request so far (``outputs[0].token_ids`` grows by the
  tokens of that response, ``prompt_token_ids``, ``finished``).

Per-token timing: every prompt is submitted with ``generate_async(..., streaming=True)`` from
one asyncio loop (the pattern of TensorRT-LLM's own streaming example); each streamed response
is stamped with ``perf_counter()`` when it reaches llem (with the request's token count so far;
nothing else happens per response inside the window), and, when the records are built after
the window, tokens that arrive together share the interval since the previous stamp evenly.
This gives true TTFT (from submission) and every inter-token gap; ``LLM.generate`` itself is
the same ``generate_async`` per prompt without streaming, so the engine schedules the same
requests either way.

Build or load:

- ``tensorrt.engine_path`` set -> that engine is loaded; no build.
- else the engine is looked up in ``<llem cache>/trt-engines/<key>``, where ``key`` hashes the
  compile-time fields (``build.COMPILE_TIME_FIELDS``), the TensorRT-LLM version and the GPU name; a
  hit is loaded; a miss is built from the HF model and saved there with ``LLM.save`` (atomic:
  saved into a temp folder, then renamed). The build time is part of the load time.

KV block reuse (TensorRT-LLM's prefix caching, on by default in ``KvCacheConfig``) cannot be
emptied through the LLM API, so llem turns it off unless ``tensorrt.enable_block_reuse: true``;
``clear_run_state`` says which of the two holds.

Precision / quantization: fp16 -> dtype float16, no quantization. int8 -> SmoothQuant
(``int8_sq`` = ``QuantAlgo.W8A8_SQ_PER_CHANNEL``), int4 -> AWQ (``int4_awq`` =
``QuantAlgo.W4A16_AWQ``), fp8 -> ``QuantAlgo.FP8``; ``tensorrt.quantization`` may name the
method explicitly but must agree with ``precision``.
"""

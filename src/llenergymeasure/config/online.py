"""Online-mode configuration: measure an OpenAI-compatible server under a request load.

An experiment with ``mode: online`` carries an ``online:`` section (``OnlineConfig``). The
server is either an existing ``endpoint`` (llem only sends load and meters the local ``gpus``)
or one llem starts from the experiment's engine fields (``server``). The load is ``n`` requests
(the experiment's ``n``) sent on a seeded arrival schedule at ``request_rate`` and/or capped at
``max_concurrency`` in flight.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

from llenergymeasure.config import bounds as B
from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.config.strict import STRICT_CONFIG

__all__ = [
    "ArrivalProcess",
    "OnlineApi",
    "OnlineConfig",
    "SLOConfig",
    "ServerConfig",
]

ArrivalProcess = Literal["poisson", "constant", "gamma"]
OnlineApi = Literal["chat", "completions"]

_STRICT = STRICT_CONFIG
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


class ServerConfig(BaseModel):
    """A server llem starts itself from the experiment's engine fields.

    ``port`` ``None`` picks a free loopback port; ``extra_args`` are appended verbatim to the
    engine's server command line (after the flags llem derives from the engine section).
    """

    model_config = _STRICT

    startup_timeout_s: Annotated[float, B.WAIT_TIMEOUT_SECONDS] = Field(
        900.0, description="Seconds to wait for the started server to answer."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Appended verbatim to the server's command line."
    )
    port: Annotated[int, B.PORT] | None = Field(
        None, description="Port of the started server. None = a free loopback port."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address the started server binds to.")


class SLOConfig(BaseModel):
    """Latency targets a request must all meet to count towards goodput (unset = no target)."""

    model_config = _STRICT

    ttft_ms: Annotated[float, B.LATENCY_TARGET_MS] | None = Field(
        None, description="Time-to-first-token target, milliseconds. None = no target."
    )
    tpot_ms: Annotated[float, B.LATENCY_TARGET_MS] | None = Field(
        None, description="Time-per-output-token target, milliseconds. None = no target."
    )
    e2e_ms: Annotated[float, B.LATENCY_TARGET_MS] | None = Field(
        None, description="End-to-end latency target, milliseconds. None = no target."
    )


class OnlineConfig(BaseModel):
    """How to reach (or start) the server and what load to send it.

    - ``endpoint``: base URL (``http://host:port``, optionally ending in ``/v1``) of a running
      OpenAI-compatible server. Mutually exclusive with ``server``; when neither is given llem
      starts the server with ``ServerConfig`` defaults.
    - ``gpus``: local GPUs to meter (NVML indices or UUIDs); ``None`` = all visible.
    - ``request_rate``: requests per second, or ``"inf"`` to send them all at once (then
      ``arrival`` does not matter). ``max_concurrency`` caps requests in flight; requests that
      arrive while the cap is reached wait for a free slot.
    - ``arrival``: inter-arrival distribution; ``gamma`` takes ``burstiness`` (its shape; 1 is
      Poisson, < 1 burstier, > 1 more regular).
    - ``n_warmup_requests``: sent one at a time before the load, never measured.
    - ``continuous_usage``: ask for the running token count on every streamed chunk, the exact
      per-chunk count (vLLM streams tokens that decode to no text and merges tokens under load);
      ``None`` = on for ``backend: vllm`` and ``backend: tensorrt`` (``continuous_usage_for``:
      ``vllm serve`` and ``trtllm-serve`` both take the field), off for ``backend: pytorch``,
      whose ``transformers serve`` refuses unknown request fields.
    - ``served_model_name``: the ``model`` field of each request (default: the experiment's
      ``model``).
    - ``api_key_env``: the name of the environment variable that holds the server's API key
      (sent as ``Authorization: Bearer <key>``; the key is never written anywhere). Checked
      to be set in pre-flight and by ``--dry-run``.
    - ``preflight_timeout_s``: the deadline of each pre-flight call to the server
      (``GET /v1/models``), for the whole answer, not per read.
    """

    model_config = _STRICT

    endpoint: str | None = Field(
        None,
        description=(
            "Base URL of a running OpenAI-compatible server (http://host:port[/v1]). None = llem "
            "starts the engine's server."
        ),
    )
    server: ServerConfig | None = Field(
        None,
        description=(
            "A server llem starts from the experiment's engine fields (exclusive with endpoint)."
        ),
    )
    gpus: list[Annotated[int, B.GPU_INDEX] | str] | None = Field(
        None,
        max_length=int(B.GPU_COUNT.upper),
        description="Local GPUs to meter (NVML indices or UUIDs). None = all visible.",
    )
    api: OnlineApi = Field("completions", description="OpenAI API used: completions or chat.")
    arrival: ArrivalProcess = Field(
        "poisson",
        description="Inter-arrival distribution of the requests: poisson, constant or gamma.",
    )
    burstiness: Annotated[float, B.BURSTINESS] | None = Field(
        None,
        description=(
            "Shape of the gamma arrival process (1 = Poisson, < 1 burstier, > 1 more regular). "
            "gamma only."
        ),
    )
    request_rate: Annotated[float, B.REQUEST_RATE] | Literal["inf"] = Field(
        "inf", description='Requests per second, or "inf" to send all at once.'
    )
    max_concurrency: Annotated[int, B.BATCH] | None = Field(
        None,
        description="Most requests in flight; later arrivals wait for a slot. None = no cap.",
    )
    n_warmup_requests: Annotated[int, B.WARMUP_REQUESTS] = Field(
        2, description="Requests sent one at a time before the load; never measured."
    )
    seed: Annotated[int, B.SEED] = Field(0, description="Seed of the arrival schedule.")
    request_timeout_s: Annotated[float, B.WAIT_TIMEOUT_SECONDS] = Field(
        600.0, description="Seconds before one request counts as failed."
    )
    include_usage: bool = Field(
        True, description="Ask the server for token counts (stream_options.include_usage)."
    )
    continuous_usage: bool | None = Field(
        None,
        description=(
            "Ask for the running token count on every streamed chunk "
            "(stream_options.continuous_usage_stats: vLLM, SGLang, trtllm-serve), to count "
            "chunks whose tokens decode to no text and chunks of several tokens. Needs "
            "include_usage. None = on for backends vllm and tensorrt, off for pytorch "
            "(transformers serve refuses unknown fields)."
        ),
    )
    served_model_name: str | None = Field(
        None,
        min_length=1,
        description="The model field of each request. None = the experiment's model.",
    )
    slo: SLOConfig | None = Field(
        None, description="Latency targets for goodput. None = no goodput."
    )
    api_key_env: str | None = Field(
        None,
        description=(
            "Name of the environment variable holding the server's API key, sent as "
            "'Authorization: Bearer <key>' and never written anywhere. None = no key."
        ),
    )
    preflight_timeout_s: Annotated[float, B.PREFLIGHT_TIMEOUT_SECONDS] = Field(
        30.0,
        description="Seconds one pre-flight call to the server (GET /v1/models) may take in all.",
    )

    @field_validator("api_key_env")
    @classmethod
    def _check_api_key_env(cls, value: str | None) -> str | None:
        # the message never repeats the value: a key pasted here by mistake stays unprinted
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "api_key_env takes the NAME of an environment variable (letters, digits and _, "
                "not starting with a digit), not the key itself: e.g. api_key_env: "
                "OPENAI_API_KEY, with the key exported in that variable"
            )
        return value

    @field_validator("request_rate", mode="before")
    @classmethod
    def _normalise_rate(cls, value: Any) -> Any:
        # YAML's `.inf` arrives as a float; the string is case-insensitive.
        if isinstance(value, str) and value.strip().lower() in {"inf", "infinity"}:
            return "inf"
        if isinstance(value, float) and math.isinf(value) and value > 0:
            return "inf"
        if isinstance(value, bool):
            raise ValueError("request_rate must be a number of requests per second or 'inf'")
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or not B.REQUEST_RATE.contains(value):
                raise ValueError(
                    f"request_rate must be in {B.REQUEST_RATE.explain()}, got {value!r}"
                )
        elif isinstance(value, str):
            raise ValueError(
                f"request_rate must be a number of requests per second or 'inf', got {value!r}"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(
                f"endpoint {value!r} is not an http(s) URL: use e.g. http://127.0.0.1:8000"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"endpoint {value!r} has an invalid port") from exc
        if parts.query or parts.fragment:
            raise ValueError(f"endpoint {value!r} must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: list[int | str] | None) -> list[int | str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("gpus must list at least one GPU (or be omitted for all visible)")
        for g in value:
            if isinstance(g, int) and g < 0:
                raise ValueError(f"gpus: index {g} is negative")
            if isinstance(g, str) and not g.strip():
                raise ValueError("gpus: empty GPU identifier")
        if len(set(value)) != len(value):
            raise ValueError(f"gpus: duplicate entries in {value}")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> OnlineConfig:
        if self.endpoint is not None and self.server is not None:
            raise ValueError(
                "online: give either endpoint (a running server) or server (llem starts one), "
                "not both"
            )
        if self.continuous_usage and not self.include_usage:
            raise ValueError(
                "online.continuous_usage needs include_usage: servers send the running token "
                "count only with stream_options.include_usage"
            )
        if self.burstiness is not None and self.arrival != "gamma":
            raise ValueError(
                f"online.burstiness applies to arrival: gamma only (arrival is {self.arrival!r})"
            )
        return self

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The API key from ``api_key_env`` in ``environ`` (default ``os.environ``); ``None``
        without ``api_key_env``. ``ValueError`` naming the variable when it is unset or empty."""
        if self.api_key_env is None:
            return None
        env = os.environ if environ is None else environ
        key = env.get(self.api_key_env, "")
        if not key.strip():
            raise ValueError(
                f"online.api_key_env names {self.api_key_env}, which is not set (or empty) in "
                "the environment"
            )
        return key.strip()

    @property
    def starts_server(self) -> bool:
        """Whether llem starts the engine's server (no ``endpoint`` given)."""
        return self.endpoint is None

    @property
    def effective_server(self) -> ServerConfig:
        """The server settings in use (defaults when ``server`` is omitted)."""
        return self.server if self.server is not None else ServerConfig()

    def continuous_usage_for(self, backend: str) -> bool:
        """Whether to ask ``backend``'s server for continuous usage.

        ``continuous_usage`` when set; unset, on for the engines whose servers take
        ``stream_options.continuous_usage_stats`` (``EngineSpec.continuous_usage_stats``) when
        ``include_usage`` is on (the servers read it only together with ``include_usage``).
        """
        if self.continuous_usage is not None:
            return self.continuous_usage
        spec = ENGINES.get(backend)
        return spec is not None and spec.continuous_usage_stats and self.include_usage

    @property
    def effective_burstiness(self) -> float:
        """Gamma shape in use (1.0 = Poisson)."""
        return self.burstiness if self.burstiness is not None else 1.0

    @property
    def rate_per_s(self) -> float:
        """``request_rate`` as a float (``math.inf`` for ``"inf"``)."""
        return math.inf if self.request_rate == "inf" else float(self.request_rate)

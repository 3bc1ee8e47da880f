"""The Docker runner: one ephemeral container per experiment (without engine reuse).

The run directory on the host is the exchange directory, mounted at ``/llem``:

- ``<run_dir>/config.json``   the ExperimentConfig (written by the host)
- ``<run_dir>/out/``          what the container writes (``result.json``, ``timeseries.parquet``,
                              ``error.json`` on failure)
- ``<run_dir>/container.log`` stdout + stderr of ``docker run`` (``docker logs`` is impossible
                              with ``--rm``); always kept.

The container runs ``python -m llenergymeasure.runners.container_entry /llem/config.json
/llem/out``; the image must have llenergymeasure and the engine installed. With
``execution.reuse_engine`` an engine group's runs share one container instead
(``runners.docker_group.DockerEngineGroup``: the study directory mounted at ``/llem``, each
run's exchange directory ``/llem/<run_id>/`` laid out as above).
Tested against a fake ``docker`` executable (argv details, ``tests/unit``) and for real against
rootful podman behind a ``docker`` shim on CPU (``tests/containers``, ``.ci/podman-up.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.exceptions import ExperimentError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.results.models import ExperimentResult

__all__ = [
    "CONTAINER_DIR",
    "DEFAULT_SHM_SIZE",
    "PASSTHROUGH_ENV",
    "REPLY_MARKER",
    "DockerRunResult",
    "DockerRunner",
]

CONTAINER_DIR = "/llem"
DEFAULT_SHM_SIZE = "8g"  # vLLM's worker processes exchange tensors through /dev/shm
#: Host environment variables handed to the container (by name only: values never hit argv).
PASSTHROUGH_ENV: tuple[str, ...] = (
    "LLEM_CARBON_INTENSITY",
    "LLEM_DATACENTER_PUE",
    "LLEM_ENERGY_BACKEND",
    "LLEM_NO_PROMPT",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "HF_ENDPOINT",
)
_LOG_TAIL_LINES = 20
#: Prefix of a reply line on an engine group container's stdout (the rest of the line is JSON;
#: ``container_entry --serve`` writes them, ``DockerEngineGroup`` reads them).
REPLY_MARKER = "@@llem-reply@@ "


@dataclass
class DockerRunResult:
    """What one containerised experiment produced."""

    result: ExperimentResult
    result_path: Path
    log_path: Path
    command: list[str] = field(default_factory=list)


class DockerRunner:
    """Runs one experiment in ``docker run --rm ... <image>`` and reads its result back."""

    def __init__(
        self, image: str, *, docker: str = "docker", shm_size: str = DEFAULT_SHM_SIZE
    ) -> None:
        from llenergymeasure.config.user_config import valid_image_reference

        if not valid_image_reference(image):
            raise ValueError(
                f"DockerRunner needs a container image reference, got {image!r} (no leading "
                "'-', no spaces or control characters)"
            )
        self.image = image
        self.docker = docker
        self.shm_size = shm_size

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def preflight(self, *, timeout_s: float = 30.0) -> list[str]:
        """Problems that stop containers starting: no docker CLI, or ``docker info`` failing."""
        exe = shutil.which(self.docker)
        if exe is None:
            return [
                f"docker runner (image {self.image}) needs the `{self.docker}` CLI, which is not "
                "on PATH: install Docker with the NVIDIA Container Toolkit, or set the runner "
                "to local"
            ]
        try:
            proc = subprocess.run(
                [exe, "info"], capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return [f"docker runner: `docker info` failed ({type(e).__name__}: {e})"]
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            last = detail[-1] if detail else f"exit code {proc.returncode}"
            return [
                f"docker runner: `docker info` failed: {last} (is the Docker daemon running and "
                "may this user use it?)"
            ]
        return []

    # ─── Command ────────────────────────────────────────────────────────────
    @staticmethod
    def gpu_flag(env: Mapping[str, str]) -> list[str]:
        """``--gpus all``; ``--gpus "device=<ids>"`` when CUDA_VISIBLE_DEVICES is set.

        The quotes are part of the argument: docker parses ``--gpus`` as CSV, so a list of
        ids must be quoted (``docker run --gpus '"device=0,1"'``). An empty
        CUDA_VISIBLE_DEVICES (no GPU) gives no ``--gpus`` flag.
        """
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return ["--gpus", "all"]
        ids = ",".join(x.strip() for x in visible.split(",") if x.strip())
        return ["--gpus", f'"device={ids}"'] if ids else []

    def _options(self, config: ExperimentConfig, mount: Path, env: Mapping[str, str]) -> list[str]:
        """GPUs, ``/dev/shm`` and the exchange mount of a container for ``config``."""
        opts = self.gpu_flag(env)
        if config.backend in ENGINES and ENGINES[config.backend].needs_shm:
            opts += ["--shm-size", self.shm_size]
        return [*opts, "-v", f"{Path(mount).resolve()}:{CONTAINER_DIR}"]

    @staticmethod
    def _passthrough(env: Mapping[str, str]) -> list[str]:
        return [arg for var in PASSTHROUGH_ENV if var in env for arg in ("-e", var)]

    def build_command(
        self,
        config: ExperimentConfig,
        exchange_dir: Path,
        *,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The exact ``docker run`` argv for one experiment."""
        return self._run_argv(
            config,
            exchange_dir,
            env,
            name=name,
            docker_flags=["--rm"],
            extra_env=[f"LLEM_CONFIG_PATH={CONTAINER_DIR}/config.json"],
            entry_args=[f"{CONTAINER_DIR}/config.json", f"{CONTAINER_DIR}/out"],
        )

    def build_serve_command(
        self,
        config: ExperimentConfig,
        root: Path,
        *,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The exact ``docker run`` argv of a container serving an engine group whose run
        directories are in ``root`` (mounted at ``/llem``); requests come on its stdin."""
        return self._run_argv(
            config,
            root,
            env,
            name=name,
            docker_flags=["-i", "--rm"],
            extra_env=[],
            entry_args=["--serve", CONTAINER_DIR],
        )

    def _run_argv(
        self,
        config: ExperimentConfig,
        mounted: Path,
        env: Mapping[str, str] | None,
        *,
        name: str,
        docker_flags: list[str],
        extra_env: list[str],
        entry_args: list[str],
    ) -> list[str]:
        """``docker run`` of ``container_entry`` with ``mounted`` at ``/llem``: the argv both
        modes share, with their own flags, environment and entry arguments."""
        env = os.environ if env is None else env
        cmd = [self.docker, "run", *docker_flags, "--name", name]
        cmd += self._options(config, mounted, env)
        for item in extra_env:
            cmd += ["-e", item]
        cmd += self._passthrough(env)
        cmd += [self.image, "python", "-m", "llenergymeasure.runners.container_entry"]
        return cmd + entry_args

    # ─── Run ────────────────────────────────────────────────────────────────
    def run(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> DockerRunResult:
        """Run ``config`` in a fresh container; ``ExperimentError`` (logs kept) on failure."""

        run_dir = Path(run_dir)
        out_dir = prepare_exchange(config, run_dir)
        log_path = run_dir / "container.log"
        name = f"llem-{uuid.uuid4().hex[:12]}"
        cmd = self.build_command(config, run_dir, name=name, env=env)
        proc_env = dict(os.environ if env is None else env)
        from llenergymeasure.files import open_log, pump_lines

        # The container's output reaches the log through the redacting write path.
        log = open_log(log_path, base=run_dir)
        try:
            log.write("$ " + " ".join(cmd) + "\n")
            try:
                proc = subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=proc_env
                )
            except OSError as e:
                raise ExperimentError(f"could not start `{self.docker} run`: {e}") from e
            assert proc.stdout is not None
            pump = pump_lines(proc.stdout, log, close=False)
            try:
                returncode = proc.wait(timeout=timeout_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                pump.join()
        except subprocess.TimeoutExpired:
            # Killing the docker client does not stop the container: stop it by name.
            subprocess.run(
                [self.docker, "kill", name], capture_output=True, check=False, env=proc_env
            )
            raise ExperimentError(
                f"container {name} ({self.image}) ran past {timeout_s} s and was killed; "
                f"log: {log_path}"
            ) from None
        except ExperimentError:
            raise
        except BaseException:  # interrupted (Ctrl-C, the study's timeout): no orphan container
            subprocess.run(
                [self.docker, "kill", name], capture_output=True, check=False, env=proc_env
            )
            raise
        finally:
            log.close()

        result_path = out_dir / "result.json"
        if returncode != 0 or not result_path.is_file():
            raise ExperimentError(self._failure_message(returncode, out_dir, log_path))
        result = read_result(result_path, self.image, log_path)
        return DockerRunResult(
            result=result, result_path=result_path, log_path=log_path, command=cmd
        )

    def _failure_message(self, code: int, out_dir: Path, log_path: Path) -> str:
        what = (
            f"container ({self.image}) exited with code {code}"
            if code != 0
            else f"container ({self.image}) exited 0 but wrote no result.json"
        )
        return failure_message(what, log_path, error_dir=out_dir)


def prepare_exchange(config: ExperimentConfig, run_dir: Path) -> Path:
    """Write ``config.json`` into ``run_dir`` and empty its ``out/`` of an earlier attempt's
    files (a resumed run must not read them back); returns ``out/``."""
    from llenergymeasure.files import write_json

    out_dir = Path(run_dir) / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "timeseries.parquet", "error.json"):
        (out_dir / stale).unlink(missing_ok=True)
    # Redacted like every file: credentials reach a container through its environment.
    write_json(Path(run_dir) / "config.json", config, base=Path(run_dir))
    return out_dir


def read_result(result_path: Path, image: str, log_path: Path) -> ExperimentResult:
    """The result a container wrote; ``ExperimentError`` when it cannot be read."""
    from llenergymeasure.results.models import ExperimentResult

    try:
        return ExperimentResult.from_json(result_path)
    except Exception as e:
        raise ExperimentError(
            f"container {image} wrote an unreadable result {result_path}: {e}; log: {log_path}"
        ) from e


def failure_message(what: str, log_path: Path, *, error_dir: Path | None = None) -> str:
    """``what`` happened, the reason from ``error_dir/error.json`` when there is one, and the
    tail of the container's log."""
    error_file = error_dir / "error.json" if error_dir is not None else None
    if error_file is not None and error_file.is_file():
        try:
            err = json.loads(error_file.read_text(encoding="utf-8"))
            what += f": {err.get('type')}: {err.get('message')}"
        except (OSError, ValueError):
            pass
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    tail = text.splitlines()[-_LOG_TAIL_LINES:]
    return f"{what}\n  log: {log_path}\n" + "\n".join(f"  | {line}" for line in tail)

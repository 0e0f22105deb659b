"""A real KServe ModelServer for one exported model, as a local child process.

The local benchmark target and the tests use it: ``kservebench serve`` runs in its own
process (it imports kserve, which reads ``sys.argv`` at import time, and must never
share a process with Locust's gevent patching), on a free loopback port, with its
output in a log file, and is stopped however the caller exits.

``ready_after_s`` (process start -> model ready) is the local cold start: the
simulator uses it as the time a new replica takes to serve its first request.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from kservebench.procs import LocalServer, ManagedProcess, free_port, http_ok, kservebench_argv


class LocalModelServer(LocalServer):
    """``kservebench serve`` for ``model_dir`` under ``name`` on 127.0.0.1:``port``."""

    def __init__(
        self,
        model_dir: Path,
        name: str,
        port: int | None = None,
        log_path: Path | None = None,
        workers: int = 1,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name
        self.port = port or free_port()
        self.workers = workers
        if log_path is None:
            log_path = Path(tempfile.gettempdir()) / "kservebench-serve" / f"{name}-{self.port}.log"
        self.log_path = Path(log_path)
        self.ready_after_s: float | None = None
        self.process = ManagedProcess(
            self.argv(),
            self.log_path,
            # Never let the working directory onto sys.path: the repository's
            # `operator/` folder would shadow the standard library's `operator`.
            env={"PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1_predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.name}:predict"

    @property
    def v2_infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    @property
    def ready_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/ready"

    def argv(self) -> list[str]:
        return kservebench_argv(
            "serve",
            "--model-dir",
            str(self.model_dir),
            "--name",
            self.name,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def start(self) -> LocalModelServer:
        self.ready_after_s = None
        self.process.start()
        return self

    def is_ready(self) -> bool:
        try:
            return http_ok(self.ready_url, timeout_s=1.0)
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Block until the model answers ready; return (and keep) ``ready_after_s``.

        Raises RuntimeError with the server's log if it exits first, TimeoutError if
        it is not ready in time.
        """
        self.process.wait_ready(
            lambda: http_ok(self.ready_url, timeout_s=1.0),
            timeout_s,
            f"model server {self.name!r} ({self.model_dir})",
        )
        assert self.process.started_at is not None
        self.ready_after_s = time.time() - self.process.started_at
        return self.ready_after_s

    def stop(self) -> int | None:
        return self.process.stop()

    def log_tail(self, lines: int = 30) -> str:
        return self.process.log_tail(lines)

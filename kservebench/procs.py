"""Local processes (model servers, Prometheus) started and stopped cleanly.

The local target and the tests run real servers as child processes. Each one gets a
free loopback port, a log file, and is stopped (SIGTERM, then SIGKILL) however the
caller exits, so no benchmark or test leaves servers behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import requests

# Runs the `kservebench` command of this interpreter, whichever virtualenv it is in, and
# exits with its status (the console script may not be on PATH in tests or subprocesses).
_ENTRY = "import sys; from kservebench.cli import main; sys.exit(main())"


def kservebench_argv(*args: str) -> list[str]:
    """The argv that runs ``kservebench ARGS...`` with this interpreter."""
    return [sys.executable, "-c", _ENTRY, *args]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet: poll again
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    return requests.get(url, timeout=timeout_s).status_code == 200


class ManagedProcess:
    """A child process with its output in ``log_path``; a context manager that stops it."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.started_at = time.time()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
            cwd=self.cwd,
            start_new_session=True,  # its own process group, so stop() reaches its workers
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, "process not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(
                    f"{what} exited with code {self.popen.returncode if self.popen else '?'}"
                    f" before it was ready; log {self.log_path}:\n{self.log_tail()}"
                )
            return check()

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except RuntimeError:
                raise
            except Exception:  # not listening yet
                pass
            time.sleep(0.1)
        raise TimeoutError(
            f"{what} not ready after {timeout_s:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 10.0) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                return self.popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        return self.popen.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalServer:
    """A local server as a context manager: started and ready on entry, stopped on exit.

    Subclasses implement ``start``, ``wait_ready`` and ``stop``; a server that fails to
    get ready is stopped before the error propagates, so nothing is left running.
    """

    def start(self) -> object:
        raise NotImplementedError

    def wait_ready(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Shared fixtures: trained models and real local KServe model servers.

Kept light at import time (no scikit-learn, xgboost, kserve or Locust imports here):
every test module loads this file, and Locust's gevent patching must only happen in
the tests that ask for it.

- ``trained_models`` (session): ``{name: model_dir}`` for all six catalogue models, in
  one temporary folder. Each model is trained the first time it is looked up (from
  0.3 s for sklearn-small to ~4 s of CPU for the large ones), so a test that only
  needs ``trained_models["sklearn-small"]`` never waits for the others.
- ``model_server`` (function): factory, ``model_server("sklearn-small")`` returns a
  started, ready ``LocalModelServer`` (a real ``kservebench serve`` child process on a
  free loopback port), stopped when the test ends. Keyword arguments (``workers=2``,
  ``name="other"``) go to ``LocalModelServer``.
- ``shared_model_server`` (session): same factory, but one server per model name kept
  for the whole session (saves ~2 s of start-up per test). Its ``/metrics`` counters
  include other tests' requests: compare before/after, never against zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kservebench.models.local import LocalModelServer

ServerFactory = Callable[..., "LocalModelServer"]
SERVER_READY_TIMEOUT_S = 90.0  # generous: 2 cores shared with other work


class TrainedModels(Mapping[str, Path]):
    """Model directories under ``out_dir``, each trained on first lookup."""

    def __init__(self, out_dir: Path) -> None:
        from kservebench.models import MODEL_NAMES

        self.out_dir = out_dir
        self.names = list(MODEL_NAMES)
        self._dirs: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._dirs:
            if name not in self.names:
                raise KeyError(f"no catalogue model {name!r}; have {self.names}")
            from kservebench.models import train_models

            self._dirs.update(train_models(self.out_dir, [name]))
        return self._dirs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Path]:
    return TrainedModels(tmp_path_factory.mktemp("trained"))


def _server_factory(
    trained: Mapping[str, Path], log_dir: Path, started: list[LocalModelServer]
) -> ServerFactory:
    from kservebench.models import LocalModelServer

    def start(model: str, **kwargs: Any) -> LocalModelServer:
        model_dir = trained[model]
        kwargs.setdefault("name", model)
        kwargs.setdefault("log_path", log_dir / f"{kwargs['name']}-{len(started)}.log")
        server = LocalModelServer(model_dir, **kwargs)
        started.append(server)
        server.start()
        server.wait_ready(SERVER_READY_TIMEOUT_S)
        return server

    return start


@pytest.fixture
def model_server(trained_models: Mapping[str, Path], tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[LocalModelServer] = []
    try:
        yield _server_factory(trained_models, tmp_path / "servers", started)
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def shared_model_server(
    trained_models: Mapping[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    started: list[LocalModelServer] = []
    by_name: dict[str, LocalModelServer] = {}
    factory = _server_factory(trained_models, tmp_path_factory.mktemp("servers"), started)

    def get(model: str) -> LocalModelServer:
        server = by_name.get(model)
        if server is None or not server.alive():
            server = by_name[model] = factory(model)
        return server

    try:
        yield get
    finally:
        for server in started:
            server.stop()


@pytest.fixture
async def kopf_operator(kmock):
    """Factory: ``await kopf_operator(register)`` runs kopf handlers against KMock.

    ``register(registry)`` attaches the handlers under test. The operator runs in this
    test's event loop (KMock serves from the same loop, so handlers must be sync or truly
    async), standalone and cluster-wide, and is cancelled at teardown (milliseconds; a stop
    flag takes ~5 s). The handlers' kubernetes client points at KMock, as in a cluster.
    """
    import asyncio
    import contextlib

    import kopf
    import kubernetes

    url = str(kmock.url).rstrip("/")
    previous = kubernetes.client.Configuration.get_default_copy()
    config = kubernetes.client.Configuration()
    config.host = url
    kubernetes.client.Configuration.set_default(config)
    tasks: list[asyncio.Task[None]] = []

    async def start(register: Callable[[kopf.OperatorRegistry], None]) -> None:
        registry = kopf.OperatorRegistry()
        register(registry)

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url)

        settings = kopf.OperatorSettings()
        settings.peering.standalone = True
        settings.watching.reconnect_backoff = 0.2
        tasks.append(
            asyncio.create_task(
                kopf.operator(
                    registry=registry, settings=settings, standalone=True, clusterwide=True
                )
            )
        )

    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        kubernetes.client.Configuration.set_default(previous)

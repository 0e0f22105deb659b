"""The served model: a ``kserve.Model`` for either exported artifact, run by KServe's
own ``ModelServer`` (REST v1 and v2, ``/metrics``).

It behaves like KServe's sklearnserver and xgbserver runtimes (which are not on
PyPI): the sklearn estimator answers ``predict`` (class labels), the xgboost Booster
answers ``Booster.predict`` on a DMatrix; one ``predict`` serves both protocols
through ``kserve.utils.utils.get_predict_input`` / ``get_predict_response``.

Importing this module imports kserve, whose ModelServer reads ``sys.argv`` at import
time: only the ``serve`` command (a process of its own) imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.utils.utils import get_predict_input, get_predict_response

from kservebench.models.artifacts import find_artifact, load_artifact
from kservebench.models.catalog import Framework


def share_metrics_across_workers() -> bool:
    """With several uvicorn workers, make ``/metrics`` report all of them together.

    Each worker is its own process with its own counters, and a scrape reaches one
    worker at random: ``request_predict_seconds_count`` would jump between workers'
    values. When ``PROMETHEUS_MULTIPROC_DIR`` is set (``serve`` sets it for workers > 1,
    before anything imports prometheus_client), every process writes its samples there;
    here KServe's per-process histograms leave the registry that ``/metrics`` exposes
    and prometheus_client's multiprocess collector, which sums all processes' files,
    takes their place. Runs at import, so also in each worker (workers are spawned and
    import this module to unpickle the model).
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return False
    from kserve import metrics
    from prometheus_client import REGISTRY, multiprocess

    for histogram in (
        metrics.PRE_HIST_TIME,
        metrics.POST_HIST_TIME,
        metrics.PREDICT_HIST_TIME,
        metrics.EXPLAIN_HIST_TIME,
    ):
        try:
            REGISTRY.unregister(histogram)
        except KeyError:  # already swapped in this process
            return True
    multiprocess.MultiProcessCollector(REGISTRY)
    return True


share_metrics_across_workers()


def check_instances(instances: Any, n_features: int | None) -> np.ndarray:
    """A 2-D numeric batch with the model's feature count, else InvalidInput (HTTP 400)."""
    array = np.asarray(instances)
    if array.ndim != 2:
        raise InvalidInput(f"expected a 2-D batch of instances, got shape {list(array.shape)}")
    if n_features is not None and array.shape[1] != n_features:
        raise InvalidInput(f"expected {n_features} features per instance, got {array.shape[1]}")
    if not np.issubdtype(array.dtype, np.number):
        raise InvalidInput(f"expected numeric features, got dtype {array.dtype}")
    return array


class TabularModel(kserve.Model):
    """An exported scikit-learn or xgboost model directory, served by name."""

    def __init__(self, name: str, model_dir: Path, nthread: int = 1) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.nthread = nthread
        self.framework: Framework | None = None
        self.n_features: int | None = None
        self._model: Any = None

    def load(self) -> bool:
        artifact, self.framework = find_artifact(self.model_dir)
        self._model = load_artifact(artifact, self.framework, nthread=self.nthread)
        if self.framework == "sklearn":
            self.n_features = getattr(self._model, "n_features_in_", None)
        else:
            self.n_features = self._model.num_features()
        self.ready = True
        return self.ready

    def predict(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        instances = check_instances(get_predict_input(payload), self.n_features)
        try:
            if self.framework == "sklearn":
                result = self._model.predict(instances)
            else:
                import xgboost as xgb

                result = self._model.predict(xgb.DMatrix(instances, nthread=self.nthread))
        except Exception as exc:  # the library's own message is the useful part
            raise InferenceError(str(exc)) from exc
        return get_predict_response(payload, result, self.name)


class LoopbackModelServer(kserve.ModelServer):
    """KServe's ModelServer listening on a chosen address instead of always 0.0.0.0.

    Locally the benchmark and the tests must bind 127.0.0.1 only; in a container the
    address is 0.0.0.0. ModelServer builds its REST server inside ``start()`` and runs
    it after ``setup_event_loop()``: that hook is the one place to set the address.
    """

    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host

    def setup_event_loop(self) -> None:
        rest = self._rest_server
        if self._rest_multiprocess_server is not None:
            rest = self._rest_multiprocess_server._rest_server
        if rest is not None:
            rest.config.host = self.host
        super().setup_event_loop()


def serve(model_dir: Path, name: str, port: int, workers: int = 1, host: str = "127.0.0.1") -> None:
    """Load the model and run KServe's ModelServer until SIGTERM/SIGINT (blocks).

    gRPC is off: it would listen on a fixed port (8081), and the benchmark speaks REST.
    """
    model = TabularModel(name, model_dir)
    model.load()
    server = LoopbackModelServer(host, http_port=port, workers=workers, enable_grpc=False)
    server.start([model])

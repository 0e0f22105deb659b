"""kservebench: a Kubernetes operator and benchmark harness for KServe."""

__version__ = "0.1.0"

"""The local target's control plane: real replica processes under CPU limits, a router per
model (Service, or Knative's activator and queue-proxy), live HPA and KPA loops over the
shared policies (``kservebench.policies``), supervision, and Prometheus metrics under the
names a cluster exports. docs/local-control-plane.md describes how the parts fit.
"""

"""Scaling policies as pure decisions: observations in, desired replicas out, no I/O.

One module per policy (``hpa``: the Kubernetes HorizontalPodAutoscaler, ``kpa``: the
Knative Pod Autoscaler). The simulator (``kservebench.sim``), the local control plane
(``kservebench.local``) and the operator all import them from here, so a decision made in
a simulation is the one the live loops make on real replicas.
"""

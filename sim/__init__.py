"""Discrete-event simulation of KServe autoscaling: Kubernetes HPA and Knative KPA.

- ``hpa.decide`` / ``kpa.decide``: the control planes as pure decisions;
- ``engine.Cluster``: the simpy model of one deployment (replicas, routing, cold starts);
- ``experiment.simulate_experiment(experiment, out_dir, calibration=None)``: an experiment
  spec into a results folder (``kservebench simulate``);
- ``calibrate.calibrate_from_run(run_dir)``: service and cold-start times of a measured run;
- ``projection.project_run(run_dir, experiment)``: a measured local run's simulated
  HPA/KPA projection, calibrated from it, in ``run_dir/simulated`` (the bench's local target);
- ``replay.replay_records``: a measured run's own arrivals through fixed replicas.
"""

from kservebench.sim.calibrate import calibrate_from_run
from kservebench.sim.experiment import simulate_experiment
from kservebench.sim.projection import project_run

__all__ = ["calibrate_from_run", "project_run", "simulate_experiment"]

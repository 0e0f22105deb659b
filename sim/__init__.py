"""Discrete-event simulation of KServe autoscaling: Kubernetes HPA and Knative KPA.

- ``hpa.decide`` / ``kpa.decide``: the control planes as pure decisions;
- ``engine.Cluster``: the simpy model of one deployment (replicas, routing, cold starts);
- ``experiment.simulate_experiment(experiment, out_dir, calibration=None)``: an experiment
  spec into a results folder (``kservebench simulate``);
- ``calibrate.calibrate_from_run(run_dir)``: service and cold-start times of a measured run;
- ``replay.replay_records``: a measured run's own arrivals through fixed replicas.
"""

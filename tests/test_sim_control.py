"""The HPA and KPA decisions against their documented behaviour (pure functions)."""

from kservebench.policies import hpa, kpa


def _pods(utilizations, request=1.0, now=1000.0, **kwargs):
    """Ready pods, long past start-up, with fresh samples at ``utilizations`` (percent)."""
    return tuple(
        hpa.PodSample(
            request_cores=request,
            usage_cores=None if u is None else request * u / 100,
            started_s=now - 1000.0,
            ready_changed_s=now - 1000.0,
            sample_s=now,
            **kwargs,
        )
        for u in utilizations
    )


def _hpa(utilizations, current, target=80.0, state=None, now=1000.0, **params):
    p = hpa.HpaParams(min_replicas=1, max_replicas=100, target_utilization=target, **params)
    obs = hpa.HpaObservation(now, current, _pods(utilizations, now=now))
    return hpa.decide(obs, state or hpa.HpaState(), p)


def test_hpa_documented_ratio_examples():
    # Docs: desired = ceil(current * current/target): 200% of target doubles...
    decision, _ = _hpa([100, 100], current=2, target=50)
    assert decision.desired_replicas == 4
    # ...and 50% of target halves (no earlier recommendation to stabilize on).
    decision, _ = _hpa([25] * 4, current=4, target=50)
    assert decision.desired_replicas == 2
    # 3 pods at 90% with target 50 -> ceil(5.4) = 6.
    decision, _ = _hpa([90, 90, 90], current=3, target=50)
    assert decision.desired_replicas == 6


def test_hpa_tolerance_band():
    # ratio 1.08 is within the 0.1 tolerance: no change; 1.12 is not.
    assert _hpa([86.4] * 10, current=10)[0].desired_replicas == 10
    assert _hpa([89.6] * 10, current=10)[0].desired_replicas == 12
    # Below the band as well.
    assert _hpa([73.6] * 10, current=10)[0].desired_replicas == 10  # 0.92


def test_hpa_scale_down_stabilization_keeps_the_max_recommendation():
    state = hpa.HpaState()
    decision, state = _hpa([80] * 5, current=5, state=state, now=0.0)
    assert decision.desired_replicas == 5
    seen = []
    for t in range(15, 300, 15):  # load drops: every sync recommends 2
        decision, state = _hpa([32] * 5, current=5, state=state, now=float(t))
        assert decision.calculated == 2
        seen.append(decision.desired_replicas)
    assert set(seen) == {5}  # the 5 from t=0 is still inside the 300 s window
    decision, state = _hpa([32] * 5, current=5, state=state, now=300.0)
    assert decision.desired_replicas == 2


def test_hpa_scale_up_policy_limits_growth_per_period():
    # 2 pods at 400% of target want 8 -> max(100 % -> 4, +4 pods -> 6) = 6.
    decision, state = _hpa([100, 100], current=2, target=25, now=0.0)
    assert (decision.calculated, decision.desired_replicas) == (8, 6)
    assert decision.reason == "ScaleUpLimit"
    # Within the same 15 s period the 4 added pods count against the limit.
    decision, state = _hpa([100] * 6, current=6, target=25, state=state, now=14.0)
    assert decision.desired_replicas == 6
    # Next period: from 6, max(12, 10) = 12 (calculated 24).
    decision, state = _hpa([100] * 6, current=6, target=25, state=state, now=15.0)
    assert decision.desired_replicas == 12


def test_hpa_min_and_max_bounds():
    p = hpa.HpaParams(min_replicas=2, max_replicas=5, target_utilization=10)
    decision, _ = hpa.decide(hpa.HpaObservation(1000.0, 3, _pods([100] * 3)), hpa.HpaState(), p)
    assert decision.desired_replicas == 5
    no_window = hpa.ScalingRules(0, hpa.DEFAULT_SCALE_DOWN.policies)
    p = hpa.HpaParams(min_replicas=2, max_replicas=5, target_utilization=80, scale_down=no_window)
    decision, _ = hpa.decide(hpa.HpaObservation(1000.0, 3, _pods([1] * 3)), hpa.HpaState(), p)
    assert decision.desired_replicas == 2


def test_hpa_unready_pods_count_as_zero_on_scale_up():
    # 1 ready pod at 120 % of target and 1 pending pod: with the pending one at 0 %
    # the ratio flips below 1, so the controller keeps 2 (it would want 2 from 1 pod).
    pending = hpa.PodSample(request_cores=1.0, pending=True, ready=False)
    obs = hpa.HpaObservation(1000.0, 2, (*_pods([60]), pending))
    decision, _ = hpa.decide(obs, hpa.HpaState(), hpa.HpaParams(1, 10, 50))
    assert decision.desired_replicas == 2
    # A ready pod measured within a window of becoming ready (start-up CPU) is set aside.
    fresh = hpa.PodSample(
        1.0, usage_cores=2.0, started_s=990.0, ready_changed_s=995.0, sample_s=1000.0, window_s=15.0
    )
    obs = hpa.HpaObservation(1000.0, 2, (*_pods([40]), fresh))
    decision, _ = hpa.decide(obs, hpa.HpaState(), hpa.HpaParams(1, 10, 50))
    assert decision.utilization == 40.0


def test_hpa_missing_metrics_damp_scale_down():
    # One pod at 10 %, one without metrics: on scale-down the missing one counts as
    # 100 % -> 55 % vs target 50 is within tolerance, so 2 stay (not 1).
    state = hpa.HpaState()
    p = hpa.HpaParams(1, 10, 50, scale_down=hpa.ScalingRules(0, hpa.DEFAULT_SCALE_DOWN.policies))
    obs = hpa.HpaObservation(1000.0, 2, _pods([10, None]))
    assert hpa.decide(obs, state, p)[0].desired_replicas == 2
    obs = hpa.HpaObservation(1000.0, 2, _pods([10, 10]))
    assert hpa.decide(obs, state, p)[0].desired_replicas == 1


# --- KPA ---------------------------------------------------------------------------------


def _kpa(params=None, **kwargs):
    return params or kpa.KpaParams(target=10, target_utilization=1.0, **kwargs)


def test_kpa_per_pod_target_uses_utilization_and_container_concurrency():
    assert kpa.KpaParams(target=5).pod_target == 3.5
    assert kpa.KpaParams(target=100, container_concurrency=8).pod_target == 8 * 0.7
    assert kpa.KpaParams(metric="rps", target=200, container_concurrency=8).pod_target == 140


def test_kpa_stable_mode_sizes_for_the_stable_average():
    p = _kpa()
    obs = kpa.KpaObservation(100.0, ready_pods=2, stable_value=25, panic_value=25, current_scale=2)
    decision, _ = kpa.decide(obs, kpa.KpaState(), p)
    assert (decision.scale, decision.panicking) == (3, False)
    # Scale-down is limited to halving per decision (max-scale-down-rate 2).
    obs = kpa.KpaObservation(100.0, ready_pods=8, stable_value=1, panic_value=1, current_scale=8)
    assert kpa.decide(obs, kpa.KpaState(), p)[0].scale == 4


def test_kpa_panics_at_200_percent_and_holds_for_a_stable_window():
    p = _kpa()
    state = kpa.KpaState()
    # 2 ready pods of target 10: panic desire 3 pods is 150 %: no panic.
    obs = kpa.KpaObservation(10.0, 2, stable_value=5, panic_value=30, current_scale=2)
    decision, state = kpa.decide(obs, state, p)
    assert not decision.panicking and decision.scale == 1  # stable says 1
    # Panic desire 4 pods = 200 % of ready: panic, desire max(stable, panic) = 4.
    obs = kpa.KpaObservation(12.0, 2, stable_value=5, panic_value=40, current_scale=2)
    decision, state = kpa.decide(obs, state, p)
    assert decision.panicking and decision.scale == 4
    # The burst is gone: still panicking, and never scaling below the panic maximum...
    for t in range(14, 73, 2):
        obs = kpa.KpaObservation(float(t), 4, stable_value=5, panic_value=5, current_scale=4)
        decision, state = kpa.decide(obs, state, p)
        assert decision.panicking and decision.scale == 4, t
    # ...until a full stable window (60 s) after the last time over the threshold.
    obs = kpa.KpaObservation(74.0, 4, stable_value=5, panic_value=5, current_scale=4)
    decision, state = kpa.decide(obs, state, p)
    assert not decision.panicking and decision.scale == 2  # halving limit from 4


def test_kpa_scale_to_zero_waits_for_the_grace_period():
    p = _kpa()
    state = kpa.KpaState(active_since_s=0.0)
    obs = kpa.KpaObservation(200.0, 1, stable_value=0, panic_value=0, current_scale=1)
    decision, state = kpa.decide(obs, state, p)
    assert decision.desired_pods == 0 and decision.scale == 1 and not state.active
    for t in range(202, 230, 2):
        obs = kpa.KpaObservation(float(t), 1, 0, 0, current_scale=1)
        decision, state = kpa.decide(obs, state, p)
        assert decision.scale == 1, t
    obs = kpa.KpaObservation(230.0, 1, 0, 0, current_scale=1)
    assert kpa.decide(obs, state, p)[0].scale == 0
    # Retention longer than the grace period keeps the last pod longer.
    p = _kpa(scale_to_zero_retention_s=120.0)
    assert kpa.decide(obs, state, p)[0].scale == 1
    # min-scale 1 never reaches zero.
    p = _kpa(min_scale=1)
    assert kpa.decide(obs, state, p)[0].scale == 1


def test_kpa_scale_down_delay_keeps_the_window_maximum():
    p = _kpa(scale_down_delay_s=10.0)
    state = kpa.KpaState()
    decision, state = kpa.decide(kpa.KpaObservation(0.0, 3, 30, 30, 3), state, p)
    assert decision.scale == 3
    decision, state = kpa.decide(kpa.KpaObservation(4.0, 3, 10, 10, 3), state, p)
    assert decision.scale == 3
    decision, state = kpa.decide(kpa.KpaObservation(10.0, 3, 10, 10, 3), state, p)
    assert decision.scale == 1


def test_window_average_uses_available_buckets_until_the_window_fills():
    assert kpa.window_average([4.0, 2.0], 1.0, 2.0, 60.0) == 3.0
    buckets = [0.0] * 60 + [6.0] * 6
    assert kpa.window_average(buckets, 1.0, 66.0, 6.0) == 6.0
    assert kpa.window_average(buckets, 1.0, 66.0, 60.0) == 0.6


def test_kpa_excess_burst_capacity_decides_whether_the_activator_stays():
    obs = kpa.KpaObservation(10.0, ready_pods=30, stable_value=50, panic_value=50, current_scale=30)
    # 30 pods x 10 - 211 - 50 = 39 spare: the activator may leave the path.
    assert kpa.decide(obs, kpa.KpaState(), _kpa())[0].excess_burst_capacity == 39
    few = kpa.KpaObservation(10.0, ready_pods=3, stable_value=5, panic_value=5, current_scale=3)
    assert kpa.decide(few, kpa.KpaState(), _kpa())[0].excess_burst_capacity < 0
    always = _kpa(target_burst_capacity=-1)
    assert kpa.decide(obs, kpa.KpaState(), always)[0].excess_burst_capacity == -1
    never = _kpa(target_burst_capacity=0)
    assert kpa.decide(few, kpa.KpaState(), never)[0].excess_burst_capacity == 0

"""The WVA baselines against WVA's own unit-test numbers (../shared/WVA.md sections 2, 3, 10),
and the HPA/KEDA baselines of ``llm_hpa``."""

from __future__ import annotations

import pytest

from kservebench.errors import SpecError
from kservebench.policies import hpa, llm_hpa, wva, wva_v2
from kservebench.policies.llm_signals import (
    LlmInputs,
    ReplicaMetrics,
    ReplicaState,
    VariantSpec,
)
from kservebench.policies.wva import (
    PodSaturation,
    SaturationConfig,
    VariantReplicaState,
    analyze,
    calculate_targets,
)
from kservebench.policies.wva_v2 import (
    VariantCapacity,
    Workload,
    estimate_capacity_from_params,
    optimize,
    replica_capacity,
    required_and_spare,
)

CFG = SaturationConfig()  # 0.8 / 5 / 0.1 / 3, the shipped ConfigMap


def pods(*values, variant="v"):
    return [PodSaturation(f"p{i}", variant, kv, q) for i, (kv, q) in enumerate(values)]


# --- V1: the analyzer ----------------------------------------------------------------------


def test_v1_kv_spare_below_the_trigger_scales_up():
    a = analyze(pods((0.75, 2), (0.76, 2)), CFG)
    assert a.avg_spare_kv == pytest.approx(0.045)
    assert a.should_scale_up


def test_v1_queue_spare_below_the_trigger_scales_up():
    a = analyze(pods((0.5, 3), (0.5, 3)), CFG)
    assert a.avg_spare_queue == 2 and a.should_scale_up


def test_v1_healthy_replicas_do_not_scale_up():
    assert not analyze(pods((0.5, 1), (0.5, 1)), CFG).should_scale_up


def test_v1_scale_down_safety_needs_two_non_saturated_replicas_with_room():
    assert analyze(pods((0.2, 1), (0.3, 1), (0.25, 1)), CFG).scale_down_safe
    assert not analyze(pods((0.70, 2), (0.75, 2)), CFG).scale_down_safe
    assert not analyze(pods((0.1, 0)), CFG).scale_down_safe  # a single non-saturated one


def test_v1_all_saturated_scales_up_and_is_never_safe_to_scale_down():
    a = analyze(pods((0.85, 2), (0.50, 6), (0.90, 7)), CFG)
    assert a.non_saturated == 0 and a.avg_spare_kv == 0 and a.avg_spare_queue == 0
    assert a.should_scale_up and not a.scale_down_safe


def test_v1_aggregates_over_variants():
    a = analyze(pods((0.3, 0), (0.4, 1), variant="a") + pods((0.3, 0), (0.2, 0), variant="b"), CFG)
    assert a.total_replicas == 4 and a.non_saturated == 4
    assert a.per_variant == {"a": 2, "b": 2}


# --- V1: the targets -----------------------------------------------------------------------

UP = analyze(pods((0.9, 9)), CFG)
DOWN = analyze(pods((0.1, 0), (0.1, 0)), CFG)


def three(desired=(0, 0, 0), current=(2, 2, 2), metrics=(None, None, None)):
    names, costs = ("v1", "v2", "v3"), (20.0, 5.0, 15.0)
    return [
        VariantReplicaState(n, c, d, 0, cost, m)
        for n, c, d, cost, m in zip(names, current, desired, costs, metrics, strict=True)
    ]


def test_v1_scale_up_adds_one_replica_to_the_cheapest_variant():
    targets, _ = calculate_targets(UP, three())
    assert targets == {"v1": 2, "v2": 3, "v3": 2}


def test_v1_scale_down_takes_one_replica_from_the_most_expensive_variant():
    targets, _ = calculate_targets(DOWN, three())
    assert targets == {"v1": 1, "v2": 2, "v3": 2}


def test_v1_a_variant_in_transition_blocks_every_variant():
    states = [VariantReplicaState("v1", 2, 4, cost=5.0), VariantReplicaState("v2", 2, 0, cost=9.0)]
    targets, reason = calculate_targets(UP, states)
    assert targets == {"v1": 4, "v2": 2} and "transition" in reason


def test_v1_fewer_pods_with_metrics_than_replicas_holds_everything():
    states = [VariantReplicaState("v", 3, 0, cost=10.0, metrics_pods=2)]
    targets, reason = calculate_targets(UP, states)
    assert targets == {"v": 3} and "transition" in reason


def test_v1_skips_variants_with_pending_replicas_for_scale_up():
    states = [
        VariantReplicaState("cheap", 2, pending=1, cost=1.0, metrics_pods=2),
        VariantReplicaState("dear", 2, cost=9.0),
    ]
    targets, _ = calculate_targets(UP, states)
    assert targets == {"cheap": 2, "dear": 3}


# --- V1: one pass ----------------------------------------------------------------------------


def inputs(metrics, replicas, variants=None, **kw):
    return LlmInputs(
        now_s=kw.pop("now_s", 100.0),
        variants=variants or (VariantSpec("v"),),
        replicas=tuple(replicas),
        metrics=None if metrics is None else tuple(metrics),
        **kw,
    )


def ready(*names, variant="v"):
    return [ReplicaState(n, variant, "ready") for n in names]


def test_v1_pass_scales_up_by_one_and_fails_static_without_metrics():
    m = [ReplicaMetrics("a", 100.0, kv_usage=0.9, waiting=6)]
    d = wva.decide(inputs(m, ready("a")), None, wva.WvaParams())
    assert d.desired == {"v": 2}
    held = wva.decide(inputs(None, ready("a"), now_s=130.0), d.state, wva.WvaParams())
    assert held.desired == {"v": 2} and "metrics unavailable" in held.reason


def test_v1_counts_a_deleted_pods_lingering_series_unless_told_not_to():
    # Issue #368: after 2 -> 1 the deleted pod's 1-minute peak is still returned.
    m = [ReplicaMetrics("a", 100.0, kv_usage=0.2), ReplicaMetrics("gone", 80.0, variant="v")]
    d = wva.decide(inputs(m, ready("a")), None, wva.WvaParams())
    assert d.desired == {"v": 1} and "transition" in d.reason
    fixed = wva.WvaParams(ignore_deleted_pods=True)
    assert "steady" in wva.decide(inputs(m, ready("a")), None, fixed).reason


def test_v1_enforcer_scale_to_zero_after_retention_and_one_on_the_cheapest_otherwise():
    params = wva.WvaParams(scale_to_zero=True, retention_s=600)
    m = [ReplicaMetrics("a", 0.0, request_success_total=5)]
    state = wva.decide(inputs(m, ready("a"), now_s=0.0), None, params).state
    m = [ReplicaMetrics("a", 600.0, request_success_total=5)]
    assert wva.decide(inputs(m, ready("a"), now_s=600.0), state, params).desired == {"v": 0}
    two = (VariantSpec("b", cost_per_hour=5.0), VariantSpec("a", cost_per_hour=5.0))
    d = wva.enforce({"a": 0, "b": 0}, inputs([], [], variants=two), 0.0, wva.WvaParams())
    assert d[0] == {"a": 1, "b": 0}  # a tie goes to the alphabetically first


def test_saturation_config_is_validated_naming_the_field():
    with pytest.raises(SpecError, match="kvCacheThreshold"):
        SaturationConfig(kv_cache_threshold=1.2)
    with pytest.raises(SpecError, match=r"kvCacheThreshold.*>= kvSpareTrigger"):
        SaturationConfig(kv_cache_threshold=0.1, kv_spare_trigger=0.2)
    with pytest.raises(SpecError, match="queueLengthThreshold"):
        SaturationConfig(queue_length_threshold=-1)


# --- V2: capacity per replica ---------------------------------------------------------------


def capacity_of(tokens, queue, total=16000, workload=Workload(), history=None):
    m = ReplicaMetrics("p", 0.0, kv_usage=tokens / total, waiting=queue, kv_capacity_tokens=total)
    return replica_capacity(m, VariantSpec("v"), workload, history or {}, CFG)


def test_v2_capacity_is_the_memory_bound_without_a_queue():
    rc, observed = capacity_of(5000, 0)
    assert rc.capacity == 12800 and rc.k2_source == "k1" and observed is None


def test_v2_capacity_is_the_observed_compute_bound_with_a_queue():
    rc, observed = capacity_of(8000, 6)
    assert rc.capacity == 8000 and rc.k2_source == "observed" and observed[1] == 8000
    assert capacity_of(4000, 10)[0].capacity == 4000
    # later, without a queue, the rolling average of observations counts
    rc, _ = capacity_of(1000, 0, history={observed[0]: (8000.0, 6000.0)})
    assert rc.capacity == 7000 and rc.k2_source == "history"


def test_v2_capacity_from_the_engine_settings():
    assert estimate_capacity_from_params(4096, 256, 500, 100) == 140800
    assert estimate_capacity_from_params(8192, 64, 100, 200) == 12800


def test_v2_required_and_spare_capacity():
    one = [VariantCapacity("v", 1, 12800, 10.0, demand=10000)]  # 10000 / 12800 = 0.78
    assert required_and_spare(one, 0, 0.85, 0.70)[:2] == (0, 0)
    two = [VariantCapacity("v", 2, 12800, 10.0, demand=2000)]  # two pods at 1000 tokens
    required, spare, _ = required_and_spare(two, 0, 0.85, 0.70)
    assert required == 0 and spare > 0
    # in raw KV terms: up above 0.8 x 0.85 = 0.68 of the cache, down below 0.56
    cap = 16000 * 0.8
    assert (
        required_and_spare([VariantCapacity("v", 1, cap, 1, demand=0.69 * 16000)], 0, 0.85, 0.70)[0]
        > 0
    )
    assert (
        required_and_spare([VariantCapacity("v", 1, cap, 1, demand=0.55 * 16000)], 0, 0.85, 0.70)[1]
        > 0
    )


# --- V2: the cost-aware optimizer ----------------------------------------------------------


def test_optimizer_scales_up_on_the_most_cost_efficient_variant_several_at_once():
    vs = [VariantCapacity("a", 1, 10000, 10.0), VariantCapacity("b", 1, 1000, 5.0)]
    assert optimize(vs, 25000, 0) == {"a": 4, "b": 1}  # a: 1e-3 $/token, b: 5e-3


def test_optimizer_does_not_skip_pending_replicas_but_skips_zero_capacity():
    vs = [VariantCapacity("a", 2, 1000, 1.0, pending=2), VariantCapacity("z", 1, 0, 0.1)]
    assert optimize(vs, 1500, 0) == {"a": 4, "z": 1}


def test_optimizer_spreads_over_variants_when_one_is_not_enough():
    vs = [VariantCapacity("a", 1, 1000, 1.0, max_replicas=3), VariantCapacity("b", 0, 1000, 2.0)]
    assert optimize(vs, 4000, 0) == {"a": 3, "b": 2}


def test_optimizer_scales_down_the_most_expensive_variant_first():
    vs = [VariantCapacity("a", 3, 1000, 1.0), VariantCapacity("b", 3, 1000, 9.0)]
    assert optimize(vs, 0, 2500) == {"a": 3, "b": 1}


def test_optimizer_protects_one_replica_of_the_cheapest_variant_only():
    assert optimize([VariantCapacity("a", 3, 1000, 1.0)], 0, 9000) == {"a": 1}
    vs = [VariantCapacity("a", 2, 1000, 1.0), VariantCapacity("b", 2, 1000, 9.0)]
    assert optimize(vs, 0, 3000) == {"a": 1, "b": 0}  # cascade: b first, then a to 1


def test_optimizer_removes_the_cheap_variant_when_the_expensive_one_is_bigger_than_the_spare():
    vs = [VariantCapacity("cheap", 3, 2000, 1.0), VariantCapacity("dear", 1, 10000, 9.0)]
    assert optimize(vs, 0, 5000) == {"cheap": 1, "dear": 1}


def test_v2_pass_jumps_several_replicas_and_holds_without_metrics():
    def sample(pod, t, **kw):
        return ReplicaMetrics(pod, t, kv_capacity_tokens=16000, **kw)

    before = wva_v2.WvaV2State(last_metrics=(sample("a", 85.0), sample("b", 85.0)))
    busy = dict(
        kv_usage=0.95,
        waiting=40,
        request_success_total=10,
        request_prompt_tokens_sum=5000,
        request_generation_tokens_sum=2000,
    )
    m = [sample("a", 100.0, **busy), sample("b", 100.0, **busy)]
    d = wva_v2.decide(inputs(m, ready("a", "b")), before, wva_v2.WvaV2Params())
    # per replica 15200 tokens in use + 40 queued x 500 input tokens against an observed
    # capacity of 12800 (k1 < the 15200 observed): several replicas in one pass
    assert d.desired["v"] >= 5 and "required" in d.reason
    later = inputs(None, ready("a", "b"), now_s=115.0)
    held = wva_v2.decide(later, d.state, wva_v2.WvaV2Params())
    assert held.desired == d.desired and "hold" in held.reason


def test_v2_params_are_validated_naming_the_field():
    with pytest.raises(SpecError, match="scaleUpThreshold"):
        wva_v2.WvaV2Params(scale_up_threshold=0.6, scale_down_boundary=0.7)
    with pytest.raises(SpecError, match="scaleDownBoundary"):
        wva_v2.WvaV2Params(scale_down_boundary=0)


# --- HPA and KEDA on LLM replicas -------------------------------------------------------------


def test_average_value_is_ceil_of_the_sum_over_the_target_with_the_hpa_tolerance():
    params = hpa.HpaParams(min_replicas=1, max_replicas=10)
    follow = llm_hpa.follow_external
    assert follow(23, 5, 2, 0.0, hpa.HpaState(), params)[0].desired_replicas == 5
    assert follow(10.5, 5, 2, 0.0, hpa.HpaState(), params)[0].desired_replicas == 2  # 5 %
    # an exact multiple stays exact (no float rounding up)
    assert follow(10, 5, 3, 0.0, hpa.HpaState(), params)[0].desired_replicas == 2
    assert follow(0, 5, 3, 0.0, hpa.HpaState(), params)[0].desired_replicas == 1


def test_keda_waiting_scales_with_its_stabilization_and_ignores_deleted_pods():
    params = llm_hpa.WaitingParams()
    m = [ReplicaMetrics("a", 0.0, waiting=12), ReplicaMetrics("gone", 0.0, waiting=500)]
    d = llm_hpa.decide_waiting(inputs(m, ready("a"), now_s=0.0), None, params)
    assert d.desired == {"v": 3}  # ceil(12 / 5); the deleted pod's 500 are not summed
    calm = [ReplicaMetrics(p, 15.0) for p in ("a", "b", "c")]
    d = llm_hpa.decide_waiting(
        inputs(calm, ready("a", "b", "c"), now_s=15.0, spec_replicas={"v": 3}), d.state, params
    )
    assert d.desired == {"v": 3}  # scale-down stabilization: 300 s
    assert llm_hpa.decide_waiting(inputs(None, ready("a")), None, params).desired == {"v": 1}
    with pytest.raises(SpecError, match=r"hpa\.minReplicas"):
        llm_hpa.WaitingParams(hpa=hpa.HpaParams(min_replicas=0))


def test_cpu_hpa_counts_busy_engines_and_sets_loading_pods_aside():
    params = llm_hpa.CpuParams()
    replicas = [
        ReplicaState("a", "v", "ready", created_s=-900.0, ready_s=-800.0),
        ReplicaState("b", "v", "ready", created_s=-900.0, ready_s=-800.0),
        ReplicaState("c", "v", "pending", created_s=-10.0),
    ]
    m = [ReplicaMetrics(p, 0.0, cpu_cores=1.05) for p in ("a", "b")]
    d = llm_hpa.decide_cpu(inputs(m, replicas, now_s=0.0, spec_replicas={"v": 3}), None, params)
    # 105 % of the 1-core request against 80 %: up, but the loading pod counts as 0 %
    assert d.desired == {"v": 3}
    m = [ReplicaMetrics(p, 0.0, cpu_cores=1.5) for p in ("a", "b")]
    d = llm_hpa.decide_cpu(inputs(m, replicas, now_s=0.0, spec_replicas={"v": 3}), None, params)
    assert d.desired == {"v": 4}  # (1.5 + 1.5 + 0) / 3 / 0.8 = 1.25 -> ceil(3.75)

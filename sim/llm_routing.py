"""Which ready LLM replica an arriving request goes to: one table, policy name -> function.

A policy sees the ready replicas (in creation order) and a turn counter (how many requests
the router has placed so far) and returns an index into the list. The gauge-reading
policies look at the engines as of the request's arrival (the fleet advances them first);
ties go to the first candidate after a rotating start, so a burst that finds several idle
replicas spreads over them instead of piling onto the first:

* ``round_robin``: every replica in turn (kube-proxy's IPVS rr, the simplest LB);
* ``least_requests``: fewest requests sent and not finished (running + waiting + still in
  the engine's entry delay); what Envoy's LEAST_REQUEST counts, and it sees a request the
  moment it is sent, so a burst dispatched at one instant still spreads;
* ``kv_aware``: lowest KV cache usage (the llm-d inference scheduler's kv-cache scorer),
  then fewest requests (waiting requests hold no KV yet, so usage alone ties at zero).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kservebench.errors import SpecError


class RoutedReplica(Protocol):
    """What a policy may read of a replica."""

    @property
    def num_requests(self) -> int: ...

    @property
    def kv_usage(self) -> float: ...


ChooseFn = Callable[[Sequence[RoutedReplica], int], int]


@dataclass(frozen=True)
class RoutingPolicy:
    name: str
    choose: ChooseFn
    reads_gauges: bool  # False: the fleet need not bring engines up to date per arrival


def round_robin(replicas: Sequence[RoutedReplica], turn: int) -> int:
    return turn % len(replicas)


def least_requests(replicas: Sequence[RoutedReplica], turn: int) -> int:
    n = len(replicas)
    start = turn % n
    best, best_load = start, replicas[start].num_requests
    for j in range(1, n):
        i = (start + j) % n
        load = replicas[i].num_requests
        if load < best_load:
            best, best_load = i, load
    return best


def kv_aware(replicas: Sequence[RoutedReplica], turn: int) -> int:
    n = len(replicas)
    start = turn % n
    first = replicas[start]
    best, best_key = start, (first.kv_usage, first.num_requests)
    for j in range(1, n):
        i = (start + j) % n
        r = replicas[i]
        key = (r.kv_usage, r.num_requests)
        if key < best_key:
            best, best_key = i, key
    return best


ROUTING: dict[str, RoutingPolicy] = {
    p.name: p
    for p in (
        RoutingPolicy("round_robin", round_robin, reads_gauges=False),
        RoutingPolicy("least_requests", least_requests, reads_gauges=True),
        RoutingPolicy("kv_aware", kv_aware, reads_gauges=True),
    )
}


def get_routing(name: str) -> RoutingPolicy:
    try:
        return ROUTING[name]
    except KeyError:
        raise SpecError("routing", name, f"must be one of {', '.join(ROUTING)}") from None

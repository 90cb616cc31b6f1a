"""Demand-aware expansion: the demand kept per object, its thresholds, and the rule field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from patchcache.rules.model import ClassRule, ExpandAfter
from patchcache.state import StateStore
from patchcache.state.layout import MAX_DEMAND_RANGES, Demand, add_demand

SIZE = 1000


def _ask(state: StateStore, client: str, first: int, last: int, **need: float) -> bool:
    return state.record_demand(
        "k",
        "http://x/a.psf",
        "express",
        SIZE,
        '"e"',
        None,
        client=client,
        first=first,
        last=last,
        clients_needed=int(need.get("clients", 0)),
        fraction=need.get("fraction", 0.0),
    )


def test_distinct_clients_trigger(tmp_path: Path) -> None:
    with StateStore(tmp_path) as state:
        assert not _ask(state, "10.0.0.1", 0, 9, clients=3)
        assert not _ask(state, "10.0.0.1", 10, 19, clients=3)  # same client: still one
        assert not _ask(state, "10.0.0.2", 0, 9, clients=3)
        assert state.expansion("k") is None
        assert _ask(state, "10.0.0.3", 500, 509, clients=3)
        assert state.expansion("k") is True and state.get_job("k") is not None
        assert state.demand("k") is None  # forgotten once recorded
        assert not _ask(state, "10.0.0.4", 0, 9, clients=3)


def test_distinct_bytes_trigger(tmp_path: Path) -> None:
    with StateStore(tmp_path) as state:
        assert not _ask(state, "c", 0, 299, fraction=0.5)
        assert not _ask(state, "c", 0, 299, fraction=0.5)  # asked again: not new bytes
        assert not _ask(state, "c", 250, 449, fraction=0.5)
        demand = state.demand("k")
        assert demand is not None and demand.covered == 450
        assert _ask(state, "c", 900, 5000, fraction=0.5)  # clipped to the object: 99 bytes


def test_ranges_stay_bounded_and_never_understate() -> None:
    demand = Demand((), ())
    for index in range(MAX_DEMAND_RANGES + 50):
        demand = add_demand(demand, "c", index * 10, index * 10 + 4, 10**9)
    assert len(demand.ranges) == MAX_DEMAND_RANGES
    assert demand.covered >= (MAX_DEMAND_RANGES + 50) * 5


def test_expand_after_is_validated() -> None:
    rule = ClassRule.model_validate(
        {"hosts": ["a.example"], "expand_after": {"clients": 4, "fraction": 0.5}}
    )
    assert rule.expand_after == ExpandAfter(clients=4, fraction=0.5)
    with pytest.raises(ValidationError, match="needs `clients` or `fraction`"):
        ClassRule.model_validate({"hosts": ["a.example"], "expand_after": {}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ClassRule.model_validate(
            {"hosts": ["a.example"], "expand_after": {"clients": 2, "bytes": 5}}
        )
    with pytest.raises(ValidationError):
        ClassRule.model_validate({"hosts": ["a.example"], "expand_after": {"fraction": 1.5}})

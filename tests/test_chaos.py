"""A short round of `make chaos` (the fault-injection checker): every fault kind once.
With the default durability it must find nothing; with `none` it must find the lost
acknowledged orders a failover to a lagging replica causes (the checker checks)."""

from __future__ import annotations

from hotdeal_local.chaos import FAULTS, run_chaos

from .helpers import workdir


def test_every_fault_once_breaks_no_promise():
    result = run_chaos(
        seed=7, rounds=len(FAULTS), round_s=3, durability="replica", workdir=workdir("chaos")
    )
    assert result["violations"] == [], result
    assert result["faults"] == dict.fromkeys(FAULTS, 1)
    assert result["acknowledged"] > 100
    assert result["events"] == 2  # reset_mid_drain started a second event


def test_the_checker_finds_what_durability_none_loses():
    result = run_chaos(
        seed=7,
        rounds=2,
        round_s=3,
        durability="none",
        workdir=workdir("chaos-none"),
        faults=("redis_failover", "replica_lag"),
    )
    assert not result["ok"]
    assert any("not persisted" in v for v in result["violations"]), result["violations"][:5]

"""The shared budget actor on a real local Ray: several replicas (Ray tasks, each with its
own client) allocating at once never exceed a cap; the counts survive an actor restart;
an actor that is gone fails the batch with BudgetUnavailable; the intervention rule runs
on it as its ledger."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nudgeserve.serve.ray.budget import (
    BudgetClient,
    BudgetUnavailable,
    budget_actor_name,
    stop_budget,
)

RAY_TEMP_NAME = "budget"
NAMES = ("No E-Mail", "Mens E-Mail", "Womens E-Mail")


@pytest.fixture(scope="module")
def ray(local_ray):
    return local_ray


def test_concurrent_replicas_never_exceed_the_cap(ray, tmp_path):
    cap = 150
    state = tmp_path / "concurrent.json"

    @ray.remote(num_cpus=0)
    def replica(seed: int, n_batches: int) -> tuple[int, int]:
        client = BudgetClient.connect("concurrent", {"Mens E-Mail": cap}, state_path=state)
        rng = np.random.default_rng(seed)
        asked = got = 0
        for _ in range(n_batches):
            size = int(rng.integers(1, 20))
            prefs = np.where(rng.random((size, 1)) < 0.8, 1, 2).astype(np.int64)
            granted, available = client.allocate(prefs, NAMES)
            first_ok = available[np.arange(size), prefs[:, 0]]
            assert (granted[first_ok] == prefs[first_ok, 0]).all()
            asked += int((prefs[:, 0] == 1).sum())
            got += int((granted == 1).sum())
        return asked, got

    results = ray.get([replica.remote(seed, 25) for seed in range(6)])
    asked = sum(a for a, _ in results)
    got = sum(g for _, g in results)
    assert asked > cap  # the replicas together wanted more than the cap
    assert got == cap
    client = BudgetClient.connect("concurrent", {"Mens E-Mail": cap}, state_path=state)
    assert client.state().used == {"Mens E-Mail": cap}


def test_counts_survive_an_actor_restart_and_caps_follow_a_redeploy(ray, tmp_path):
    state = tmp_path / "restart.json"
    client = BudgetClient.connect("restart", {"Mens E-Mail": 10}, state_path=state)
    granted, _ = client.allocate(np.ones((7, 1), dtype=np.int64), NAMES)
    assert (granted == 1).sum() == 7
    # The process dies; Ray restarts the detached actor, which reloads the day's counts.
    before = ray.get(client.actor.info.remote())
    assert before["restored"] == {}
    ray.kill(client.actor, no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            after = ray.get(client.actor.info.remote(), timeout=5)
            if after["pid"] != before["pid"]:
                break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.monotonic() < deadline, "the budget actor did not restart"
        time.sleep(0.2)
    assert after["restored"] == {"Mens E-Mail": 7}
    assert client.state().used == {"Mens E-Mail": 7}
    granted, _ = client.allocate(np.ones((7, 1), dtype=np.int64), NAMES)
    assert (granted == 1).sum() == 3
    # A redeploy with other caps attaches to the same actor and keeps today's counts.
    again = BudgetClient.connect(
        "restart", {"Mens E-Mail": 12, "Womens E-Mail": 1}, state_path=state
    )
    assert again.state().used == {"Mens E-Mail": 10, "Womens E-Mail": 0}
    granted, _ = again.allocate(np.asarray([[1], [1], [1], [2], [2]], np.int64), NAMES)
    assert granted.tolist() == [1, 1, -1, 2, -1]


def test_a_stopped_budget_fails_the_batch(ray, tmp_path):
    client = BudgetClient.connect("stopped", {"Mens E-Mail": 3}, timeout_s=2.0)
    assert stop_budget("stopped")
    assert not stop_budget("stopped")
    with pytest.raises(BudgetUnavailable, match="not decided"):
        client.allocate(np.ones((2, 1), dtype=np.int64), NAMES)
    assert (
        ray.util.list_named_actors(all_namespaces=True).count(
            {"name": budget_actor_name("stopped"), "namespace": "nudgeserve"}
        )
        == 0
    )


def test_the_rule_decides_on_the_shared_budget(ray, tmp_path):
    from nudgeserve.models import load_hillstrom
    from nudgeserve.models.learn.uplift_ensemble import load_uplift_ensemble
    from nudgeserve.models.policies.intervention import InterventionConfig
    from nudgeserve.serve.engine.interventions import InterventionEngine

    config = InterventionConfig(
        costs={"Mens E-Mail": 0.05, "Womens E-Mail": 0.05},
        daily_caps={"Mens E-Mail": 25, "Womens E-Mail": 10},
        holdout_share=0.1,
        explore_share=0.1,
    )
    client = BudgetClient.connect("rule", config.daily_caps)
    engine = InterventionEngine(config, load_uplift_ensemble(device="cpu"), ledger=client)
    data = load_hillstrom().take(slice(0, 400))
    first = engine.decide(data.raw_columns(), np.arange(400))
    second = engine.decide(data.raw_columns(), np.arange(400, 800))
    actions = np.concatenate([first.decisions.action, second.decisions.action])
    assert (actions == 1).sum() == 25 and (actions == 2).sum() == 10
    assert client.state().used == {"Mens E-Mail": 25, "Womens E-Mail": 10}
    assert not second.decisions.available[-1, 1:].any()  # both caps closed by the end

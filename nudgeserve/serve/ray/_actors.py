"""Named detached actors that every replica shares: get-or-create, and stop.

The learner, the daily budget and the model registry each run as one actor per use case
(or per application) under a fixed name, created by whichever replica asks first. They
are detached (they outlive the replica that created them) and restarted by Ray if their
process dies; ``stop_actor`` ends one for good.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# The Ray namespace of every nudgeserve actor.
NAMESPACE = "nudgeserve"

# ``ray.remote(cls)`` once per actor class: building it again per call re-exports the class.
_remote_classes: dict[type, Any] = {}


def get_or_create_actor(
    actor_class: type,
    name: str,
    *args: Any,
    namespace: str = NAMESPACE,
    max_concurrency: int | None = None,
    pin_to_node: bool = False,
    **kwargs: Any,
) -> Any:
    """The handle of the actor ``name`` in ``namespace``, created from
    ``actor_class(*args, **kwargs)`` if it does not run yet (Ray must be initialised).

    Replicas racing to create it all get the same actor: Ray's ``get_if_exists`` looks
    the name up, and when a concurrent creation wins the race it returns the winner
    instead of failing. An existing actor keeps the arguments it was created with.

    max_concurrency: calls the actor runs at once (None: Ray's default, one for a
    synchronous actor). pin_to_node: run it on this process's node (``soft=False``: the
    actor's state is a local file there, so it must not move).
    """
    remote_class = _remote_classes.get(actor_class)
    if remote_class is None:
        remote_class = _remote_classes[actor_class] = ray.remote(actor_class)
    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "get_if_exists": True,
        "lifetime": "detached",
        "max_restarts": -1,
        # Bookkeeping actors: they must never wait for a CPU the replicas hold.
        "num_cpus": 0,
    }
    if max_concurrency is not None:
        options["max_concurrency"] = max_concurrency
    if pin_to_node:
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    return remote_class.options(**options).remote(*args, **kwargs)


def stop_actor(
    name: str,
    *,
    namespace: str = NAMESPACE,
    shutdown_method: str | None = None,
    timeout_s: float = 60.0,
) -> bool:
    """End the actor ``name`` for good (no restart); False when none was running.

    shutdown_method: the actor's method to call first (e.g. to save its state), waited
    for at most ``timeout_s``; the actor is killed even when that call fails.
    """
    try:
        actor = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    try:
        if shutdown_method is not None:
            ray.get(getattr(actor, shutdown_method).remote(), timeout=timeout_s)
    finally:
        ray.kill(actor, no_restart=True)
    return True

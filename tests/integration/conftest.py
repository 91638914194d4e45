"""One local Ray per test module that asks for it (``local_ray``).

2 CPUs (the machine the suite must fit), no dashboard, workers' logs kept out of the
test output; the temp dir is ``tests._scratch.ray_temp_dir(RAY_TEMP_NAME)``, where
``RAY_TEMP_NAME`` is a short name the test module sets: Ray puts Unix sockets under
it, whose paths must stay within Linux's 107-byte limit.
"""

from __future__ import annotations

import pytest

from tests._scratch import ray_temp_dir


@pytest.fixture(scope="module")
def local_ray(request):
    ray = pytest.importorskip("ray")
    name = getattr(request.module, "RAY_TEMP_NAME", None)
    if not name:
        raise ValueError(f"{request.module.__name__} must set RAY_TEMP_NAME to use local_ray")
    temp = ray_temp_dir(name)
    ray.init(
        num_cpus=2,
        _temp_dir=str(temp),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()

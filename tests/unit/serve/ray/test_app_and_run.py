"""Building the application and the ``run`` command's checks, without starting Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from ray.serve.deployment import Application

from nudgeserve.commands import run as run_command
from nudgeserve.serve import _env
from nudgeserve.serve.config import Autoscaling, DeploymentSettings, default_config
from nudgeserve.serve.errors import ConfigError
from nudgeserve.serve.ray.app import (
    app_builder,
    build_app,
    deployment_options,
    resolve_gpus,
    resolve_placement,
)
from nudgeserve.serve.ray.local import prepare_environment

ROOT = Path(__file__).resolve().parents[4]


def test_app_builder_takes_the_shipped_files_args():
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    app = app_builder(raw["applications"][0]["args"])
    assert isinstance(app, Application)


def test_app_builder_names_bad_args():
    with pytest.raises(ConfigError) as info:
        app_builder({"use_cases": [{"kind": "obd", "name": "o", "model_name": "m", "max_k": 0}]})
    assert info.value.setting == "args.use_cases[0].max_k"


def test_bad_checkpoint_fails_when_building(tmp_path):
    import msgspec

    config = default_config()
    obd = msgspec.structs.replace(config.use_cases[0], checkpoint=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"use_cases\[obd\]\.checkpoint"):
        build_app(msgspec.structs.replace(config, use_cases=(obd,), experiments=()), has_gpus=False)
    cuda = msgspec.structs.replace(config.use_cases[0], device="cuda")
    with pytest.raises(ConfigError, match="reserves no GPU"):
        build_app(
            msgspec.structs.replace(config, use_cases=(cuda,), experiments=()), has_gpus=False
        )


def test_deployment_options():
    fixed = deployment_options(DeploymentSettings(num_gpus=0.0), 0.0, "d")
    assert fixed["num_replicas"] == 1 and "autoscaling_config" not in fixed
    assert fixed["backpressure_config"].retry_after_s == 1.0
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    scaled = deployment_options(
        DeploymentSettings(
            autoscaling=Autoscaling(min_replicas=1, max_replicas=4), max_queued_requests=10
        ),
        1.0,
        "d",
    )
    assert scaled["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in scaled
    assert scaled["max_queued_requests"] == 10
    assert resolve_gpus(DeploymentSettings(), True) == 1.0
    assert resolve_gpus(DeploymentSettings(), False) == 0.0
    assert resolve_gpus(DeploymentSettings(num_gpus=0.25), False) == 0.25


def args(**kw):
    base = {
        "config": None,
        "host": None,
        "port": None,
        "ray_temp_dir": None,
        "num_cpus": None,
        "check": True,
        "state_dir": None,
    }
    return argparse.Namespace(**{**base, **kw})


def test_run_check_validates_without_starting(capsys):
    assert run_command.run(args(config=ROOT / "configs" / "default.yaml")) == 0
    out = capsys.readouterr().out
    assert "obd: model obd_click version 1" in out and "config OK" in out


def test_run_state_dir_moves_the_decision_log(tmp_path, capsys):
    assert run_command.run(args(state_dir=tmp_path / "state")) == 0
    assert f"decision log: {tmp_path / 'state' / 'decisions.sqlite'}" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    assert run_command.run(args(state_dir=tmp_path / "file")) == 2
    err = capsys.readouterr().err
    assert "--state-dir" in err and "not a directory" in err


def test_run_refuses_a_bad_config_with_its_setting(tmp_path, capsys):
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    raw["applications"][0]["args"]["server"]["placement"] = "everywhere"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run_command.run(args(config=path)) == 2
    err = capsys.readouterr().err
    assert "applications[0].args.server.placement = 'everywhere'" in err
    assert "colocated, separate" in err
    assert run_command.run(args(port=70000)) == 2
    assert "--port = 70000" in capsys.readouterr().err


@pytest.fixture
def restored_environ():
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_prepare_environment_sets_ray_switches_and_a_private_token(
    tmp_path, monkeypatch, restored_environ
):
    for name in (
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
        "RAY_metrics_report_interval_ms",
    ):
        monkeypatch.delenv(name, raising=False)
    prepare_environment("throughput_optimized", 9100, tmp_path)
    import os

    assert _env.ingress_mode_in_environment() == "throughput_optimized"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9100"
    token = (tmp_path / "auth_token").read_text()
    assert os.environ["RAY_AUTH_TOKEN"] == token and len(token) == 64
    assert (tmp_path / "auth_token").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    prepare_environment("proxy", 9100, tmp_path)
    assert "RAY_AUTH_TOKEN" not in os.environ
    assert _env.ingress_mode_in_environment() == "proxy"


def test_run_refuses_a_port_in_use(capsys):
    import socket

    from nudgeserve.serve.ray.local import port_is_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        assert run_command.run(args(port=port, check=False)) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


def test_auto_placement_separates_use_cases_with_a_gpu_or_several_replicas():
    import msgspec

    config = default_config()
    assert config.server.placement == "auto"
    assert resolve_placement(config, has_gpus=False) == "colocated"
    assert resolve_placement(config, has_gpus=True) == "separate"  # num_gpus: auto
    obd = config.use_cases[0]
    scaled = msgspec.structs.replace(
        obd,
        deployment=msgspec.structs.replace(
            obd.deployment, autoscaling=Autoscaling(min_replicas=1, max_replicas=3)
        ),
    )
    config2 = msgspec.structs.replace(config, use_cases=(scaled, *config.use_cases[1:]))
    assert resolve_placement(config2, has_gpus=False) == "separate"
    fixed = msgspec.structs.replace(
        config2, server=msgspec.structs.replace(config2.server, placement="colocated")
    )
    assert resolve_placement(fixed, has_gpus=True) == "colocated"


def test_local_ray_workers_run_at_normal_priority(tmp_path, monkeypatch):
    monkeypatch.delenv(_env.ENV_WORKER_NICENESS, raising=False)
    for name in ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import os

    saved = dict(os.environ)
    try:
        prepare_environment("nudgeserve", 8000, tmp_path)
        assert os.environ[_env.ENV_WORKER_NICENESS] == "0"
        # Our data plane owns the port: Ray's direct ingress stays off.
        assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    finally:
        os.environ.clear()
        os.environ.update(saved)

"""Config: the shipped file parses to the defaults; bad values name setting, value, choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nudgeserve.serve.config import (
    APP_IMPORT_PATH,
    EpsilonGreedy,
    Greedy,
    HillstromUseCase,
    ObdUseCase,
    default_config,
    load_config,
    parse_config,
)
from nudgeserve.serve.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_FILE = ROOT / "configs" / "default.yaml"

MINIMAL = {"use_cases": [{"kind": "obd", "name": "obd", "model_name": "obd_click"}]}


def with_use_case(**fields):
    return {"use_cases": [{"kind": "obd", "name": "obd", "model_name": "obd_click", **fields}]}


def test_shipped_file_is_the_default_config():
    loaded = load_config(DEFAULT_FILE)
    assert loaded.app == default_config()
    assert (loaded.http.host, loaded.http.port) == ("127.0.0.1", 8000)


def test_shipped_file_is_a_serve_deploy_config():
    raw = yaml.safe_load(DEFAULT_FILE.read_text())
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(raw)
    assert schema.applications[0].import_path == APP_IMPORT_PATH


def test_settings_alone_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    loaded = load_config(path)
    assert isinstance(loaded.app.use_cases[0], ObdUseCase)
    assert isinstance(loaded.app.use_cases[0].policy, EpsilonGreedy)


def test_tagged_sections_decode_to_their_types():
    config = parse_config(
        {
            "use_cases": [
                {"kind": "obd", "name": "a", "model_name": "m1", "policy": {"kind": "greedy"}},
                {"kind": "hillstrom", "name": "b", "model_name": "m2"},
            ]
        }
    )
    assert isinstance(config.use_cases[0].policy, Greedy)
    assert isinstance(config.use_cases[1], HillstromUseCase)
    assert config.use_case("b").max_k == 1


@pytest.mark.parametrize(
    ("raw", "setting", "fragments"),
    [
        (
            with_use_case(batching={"max_batch_size": 0}),
            "use_cases[0].batching.max_batch_size",
            ["= 0", ">= 1"],
        ),
        (
            with_use_case(batching={"batch_wait_timeout_s": -1}),
            "use_cases[0].batching.batch_wait_timeout_s",
            ["= -1", ">= 0"],
        ),
        (
            with_use_case(policy={"kind": "epsilon_greedy", "epsilon": 1.5}),
            "use_cases[0].policy.epsilon",
            ["= 1.5", "<= 1.0"],
        ),
        (
            with_use_case(policy={"kind": "softmax"}),
            "use_cases[0].policy.kind",
            ["'softmax'", "greedy, epsilon_greedy, plackett_luce, thompson, linear, control"],
        ),
        (with_use_case(device="tpu"), "use_cases[0].device", ["'tpu'", "auto, cpu, cuda"]),
        (
            with_use_case(deployment={"num_gpus": "many"}),
            "use_cases[0].deployment.num_gpus",
            ["'many'", "auto or a number"],
        ),
        (
            with_use_case(deployment={"max_queued_requests": 0}),
            "use_cases[0].deployment",
            ["max_queued_requests must be -1"],
        ),
        (
            with_use_case(deployment={"autoscaling": {"min_replicas": 3, "max_replicas": 2}}),
            "use_cases[0].deployment.autoscaling",
            ["min_replicas (3) must be <= max_replicas (2)"],
        ),
        (
            {**MINIMAL, "server": {"ingress": "fast"}},
            "server.ingress",
            ["'fast'", "direct, nudgeserve, proxy, throughput_optimized"],
        ),
        (
            {**MINIMAL, "server": {"max_body_bytes": 10}},
            "server.max_body_bytes",
            ["= 10", ">= 1024"],
        ),
        (
            {"use_cases": [{"kind": "obdx", "name": "obd", "model_name": "m"}]},
            "use_cases[0].kind",
            ["'obdx'", "obd, hillstrom"],
        ),
        (with_use_case(name="has space"), "use_cases[0].name", ["'has space'"]),
        (with_use_case(version="v2"), "use_cases[0].version", ["'v2'", "[1-9]"]),
    ],
)
def test_bad_value_names_setting_value_and_what_is_allowed(raw, setting, fragments):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.setting == setting
    message = str(info.value)
    assert setting in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_setting_is_refused_and_known_ones_listed():
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "server": {"ingres": "proxy"}})
    assert info.value.setting == "server.ingres"
    assert "ingress" in str(info.value) and "placement" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"use_cases": []}, "at least one use case"),
        ({"use_cases": MINIMAL["use_cases"] * 2}, "every name must be unique"),
        (
            {
                **MINIMAL,
                "experiments": [
                    {"name": "e", "use_case": "nope", "variants": [{"name": "a", "weight": 1}]}
                ],
            },
            "use_case 'nope' is not one of ['obd']",
        ),
        (
            {**MINIMAL, "experiments": [{"name": "e", "use_case": "obd", "variants": []}]},
            "at least one variant",
        ),
        (
            {
                **MINIMAL,
                "experiments": [
                    {
                        "name": "e",
                        "use_case": "obd",
                        "variants": [{"name": "a", "weight": 0.5}, {"name": "a", "weight": 0.5}],
                    }
                ],
            },
            "must be unique",
        ),
    ],
)
def test_cross_field_rules(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert fragment in str(info.value)


def test_serve_config_errors_are_prefixed_with_the_application_path(tmp_path):
    raw = yaml.safe_load(DEFAULT_FILE.read_text())
    raw["applications"][0]["args"]["use_cases"][0]["max_k"] = 0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.setting == "applications[0].args.use_cases[0].max_k"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: [1,", "not valid YAML"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("applications:\n  - name: x\n    import_path: other:app\n", "no application"),
        (
            "http_options: {port: 0}\napplications:\n  - import_path: "
            + APP_IMPORT_PATH
            + "\n    args: {use_cases: [{kind: obd, name: o, model_name: m}]}\n",
            "http_options.port",
        ),
    ],
)
def test_bad_files(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")

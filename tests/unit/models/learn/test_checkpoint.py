"""Checkpoint round trip, spec mismatch, corrupt and missing files, shipped defaults."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
import torch

from nudgeserve.models import (
    CheckpointError,
    FeatureSpecMismatch,
    HillstromScorer,
    ObdScorer,
    default_checkpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)


def _outputs(module, result):
    torch.manual_seed(0)
    if result.metadata.kind == "obd_click":
        args = (torch.randint(0, 64, (9, 4)), torch.rand(9, 80))
    else:
        args = (torch.randint(0, 64, (9, 3)), torch.randn(9, 5))
    with torch.no_grad():
        return module(*args).numpy()


@pytest.mark.parametrize("which", ["obd_trained", "hillstrom_trained"])
def test_round_trip(which, request, tmp_path):
    result = request.getfixturevalue(which)
    weights = save_checkpoint(result.module, result.metadata, tmp_path / "model")
    assert weights.name == "model.safetensors" and (tmp_path / "model.json").is_file()
    loaded = load_checkpoint(weights, expected_kind=result.metadata.kind)
    np.testing.assert_array_equal(_outputs(loaded.module, result), _outputs(result.module, result))
    assert loaded.metadata.feature_spec == result.metadata.feature_spec
    assert loaded.metadata.metrics == result.metadata.metrics
    assert len(loaded.metadata.weights_sha256) == 64
    # Same checkpoint by its stem or its JSON name, with the matching spec.
    again = load_checkpoint(tmp_path / "model.json", expected_spec=result.metadata.feature_spec)
    assert again.metadata == loaded.metadata
    # The JSON is human-readable and names what it holds.
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["kind"] == result.metadata.kind and meta["training"]["command"] == "test"


def test_spec_mismatch_names_the_fields(obd_trained, tmp_path):
    save_checkpoint(obd_trained.module, obd_trained.metadata, tmp_path / "obd")
    expected = msgspec.structs.replace(
        obd_trained.metadata.feature_spec, n_buckets=128, hash_seed=99
    )
    with pytest.raises(FeatureSpecMismatch, match="n_buckets: expected 128") as info:
        load_checkpoint(tmp_path / "obd", expected_spec=expected)
    assert set(info.value.differences) == {"n_buckets", "hash_seed"}
    assert isinstance(info.value, ValueError)
    with pytest.raises(FeatureSpecMismatch, match="kind"):
        load_checkpoint(tmp_path / "obd", expected_spec=_hillstrom_spec())
    with pytest.raises(CheckpointError, match="expected 'hillstrom_uplift'"):
        load_checkpoint(tmp_path / "obd", expected_kind="hillstrom_uplift")


def _hillstrom_spec():
    from nudgeserve.models import HillstromFeatureSpec

    return HillstromFeatureSpec(numeric_mean=(0.0,) * 5, numeric_std=(1.0,) * 5)


def test_corrupt_and_missing_files(hillstrom_trained, tmp_path):
    weights = save_checkpoint(hillstrom_trained.module, hillstrom_trained.metadata, tmp_path / "h")
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(weights)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(weights)
    weights.unlink()
    with pytest.raises(CheckpointError, match="do not exist"):
        load_checkpoint(weights)
    meta = tmp_path / "h.json"
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(CheckpointError, match="not JSON"):
        load_checkpoint(weights)
    meta.write_text('{"format_version": 99}')
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(weights)
    meta.write_text('{"format_version": 1, "kind": "obd_click"}')
    with pytest.raises(CheckpointError, match="invalid"):
        load_checkpoint(weights)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_weights_that_do_not_fit_the_architecture(obd_trained, hillstrom_trained, tmp_path):
    # Hillstrom weights with OBD metadata whose sha256 was rewritten to match them.
    h = save_checkpoint(hillstrom_trained.module, hillstrom_trained.metadata, tmp_path / "h")
    save_checkpoint(obd_trained.module, obd_trained.metadata, tmp_path / "o")
    meta = read_metadata(tmp_path / "h")
    fake = msgspec.structs.replace(
        read_metadata(tmp_path / "o"), weights_sha256=meta.weights_sha256
    )
    (tmp_path / "o.json").write_bytes(msgspec.json.encode(fake))
    (tmp_path / "o.safetensors").write_bytes(h.read_bytes())
    with pytest.raises(CheckpointError, match="do not fit its architecture"):
        load_checkpoint(tmp_path / "o")


@pytest.mark.parametrize("name", ["obd", "hillstrom"])
def test_shipped_default_checkpoints_load_and_score(name, obd_random, hillstrom):
    path = default_checkpoint(name)
    assert path.stat().st_size < 1_000_000
    loaded = load_checkpoint(path)
    info = loaded.metadata.training
    assert info.command.startswith(f"nudgeserve train {name} ")
    assert all(len(d.sha256) == 64 for d in info.data)
    if name == "obd":
        scorer = ObdScorer(loaded, device="cpu")
        probs = scorer.score(obd_random.user_features[:16], obd_random.affinity[:16])
        assert probs.shape == (16, 3, 80)
        # Calibrated: mean predicted CTR of the logged impressions near the observed CTR.
        ctr = obd_random.click.mean()
        assert 0.3 * ctr < probs.mean() < 3 * ctr
    else:
        scorer = HillstromScorer(loaded, device="cpu")
        prediction = scorer.score(hillstrom.take(slice(0, 2000)).raw_columns())
        # Both e-mails raise visits on average, as the randomised experiment shows.
        assert np.all(prediction.uplift("visit")[:, 1:].mean(axis=0) > 0.02)
    with pytest.raises(ValueError, match="name must be one of"):
        default_checkpoint("nope")

"""Model shapes, and the serving path == the training module, on real features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nudgeserve.models import (
    HillstromScorer,
    LoadedModel,
    ObdClickModel,
    ObdScorer,
    UpliftModel,
    select_device,
    select_precision,
)


def _loaded(result) -> LoadedModel:
    return LoadedModel(module=result.module, metadata=result.metadata, path=None)


def test_click_model_forward_shapes():
    torch.manual_seed(0)
    model = ObdClickModel(
        item_categorical_buckets=torch.randint(0, 16, (80, 3)),
        item_numeric=torch.randn(80, 1),
        n_positions=3,
        n_user_fields=4,
        n_buckets=16,
    )
    users = torch.randint(0, 16, (5, 4))
    probs = model(users, torch.zeros(5, 80))
    assert probs.shape == (5, 3, 80) and probs.dtype == torch.float32
    assert torch.all((probs > 0) & (probs < 1))
    assert model.logits(users, torch.zeros(5, 80)).shape == (5, 3, 80)


def test_uplift_model_forward_shapes_and_consistency():
    torch.manual_seed(0)
    model = UpliftModel(n_categorical=3, n_buckets=16, n_numeric=5, n_treatments=3)
    out = model(torch.randint(0, 16, (7, 3)), torch.randn(7, 5))
    assert out.shape == (7, 3, 3)
    visit, conversion, spend = out[:, 0], out[:, 1], out[:, 2]
    assert torch.all((visit > 0) & (visit < 1))
    assert torch.all(conversion <= visit)  # every conversion is a visit
    assert torch.all(spend >= 0)
    assert model.raw(torch.randint(0, 16, (7, 3)), torch.randn(7, 5)).shape == (7, 3, 3)


def test_obd_scorer_matches_training_module(obd_trained, obd_random):
    loaded = _loaded(obd_trained)
    scorer = ObdScorer(loaded, device="cpu")
    rows = slice(0, 333)
    users, aff = obd_random.user_features[rows], obd_random.affinity[rows].copy()
    aff[::7, ::5] = 2.0  # the real sample's affinities are mostly zero; exercise the term
    features = scorer.featurizer.transform(users, aff)
    with torch.no_grad():
        reference = loaded.module(
            torch.from_numpy(features.user_buckets), torch.from_numpy(features.affinity)
        ).numpy()
    got = scorer.predict(features)
    assert got.shape == (333, 3, 80) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        scorer.predict(features, position=2), reference[:, 2], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_array_equal(scorer.score(users, aff, position=0), scorer.predict(features, 0))
    assert scorer.predict(
        features._replace(user_buckets=features.user_buckets[:0], affinity=features.affinity[:0]), 1
    ).shape == (0, 80)
    with pytest.raises(ValueError, match="position"):
        scorer.predict(features, position=3)


def test_obd_host_path_matches_training_module(obd_trained, obd_random):
    """The NumPy path for small CPU batches computes the module's function. rtol 1e-5:
    both are float32 with a different summation order (a few ulp per dot product)."""
    loaded = _loaded(obd_trained)
    scorer = ObdScorer(loaded, device="cpu")
    assert scorer.host is not None and scorer.host_max_batch == 0  # not measured yet
    users, aff = obd_random.user_features[:64], obd_random.affinity[:64].copy()
    aff[::3, ::4] = 7.0
    features = scorer.featurizer.transform(users, aff)
    with torch.no_grad():
        reference = loaded.module(
            torch.from_numpy(features.user_buckets), torch.from_numpy(features.affinity)
        ).numpy()
    for n in (1, 2, 5, 64):
        got = scorer.host.predict(features.user_buckets[:n], features.affinity[:n], None)
        assert got.shape == (n, 3, 80) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference[:n], rtol=1e-5, atol=1e-7)
        for slot in range(3):
            np.testing.assert_allclose(
                scorer.host.predict(features.user_buckets[:n], features.affinity[:n], slot),
                reference[:n, slot],
                rtol=1e-5,
                atol=1e-7,
            )
    # Warm-up measures both paths and uses the host one only where it was faster.
    scorer.warmup((1, 64))
    timings = scorer.host_timings_us
    assert 1 in timings and all(h > 0 and t > 0 for h, t in timings.values())
    assert all(timings[b][0] < timings[b][1] for b in timings if b <= scorer.host_max_batch)
    one = features._replace(user_buckets=features.user_buckets[:1], affinity=features.affinity[:1])
    np.testing.assert_allclose(scorer.predict(one, 0), reference[:1, 0], rtol=1e-5, atol=1e-7)
    # The torch path on a CUDA or reduced-precision scorer: no host path.
    assert ObdScorer(loaded, device="cpu", precision="bfloat16").host is None


def test_obd_scorer_bfloat16_stays_close(obd_trained, obd_random):
    loaded = _loaded(obd_trained)
    exact = ObdScorer(loaded, device="cpu", precision="float32")
    reduced = ObdScorer(loaded, device="cpu", precision="bfloat16")
    features = exact.featurizer.transform(obd_random.user_features[:64], obd_random.affinity[:64])
    a, b = exact.predict(features), reduced.predict(features)
    assert b.dtype == np.float32
    # Only the user tower runs in bfloat16; logits and sigmoid stay float32.
    np.testing.assert_allclose(b, a, rtol=0.05)


def test_hillstrom_scorer_matches_training_module(hillstrom_trained, hillstrom):
    loaded = _loaded(hillstrom_trained)
    scorer = HillstromScorer(loaded, device="cpu")
    data = hillstrom.take(slice(0, 500))
    features = scorer.featurizer.transform(data.raw_columns())
    with torch.no_grad():
        reference = loaded.module(
            torch.from_numpy(features.categorical), torch.from_numpy(features.numeric)
        ).numpy()
    prediction = scorer.predict(features)
    for k, name in enumerate(("visit", "conversion", "spend")):
        got = prediction.outcome(name)
        assert got.shape == (500, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference[:, k], rtol=1e-5, atol=1e-6)
        uplift = prediction.uplift(name)
        np.testing.assert_array_equal(uplift[:, 0], 0)
        np.testing.assert_allclose(uplift[:, 1:], got[:, 1:] - got[:, :1], rtol=1e-6)
    assert prediction.treatments[prediction.control_index] == "No E-Mail"
    np.testing.assert_array_equal(scorer.score(data.raw_columns()).visit, prediction.visit)


def test_scorers_refuse_the_wrong_model(obd_trained, hillstrom_trained):
    with pytest.raises(ValueError, match="hillstrom_uplift"):
        HillstromScorer(_loaded(obd_trained), device="cpu")
    with pytest.raises(ValueError, match="obd_click"):
        ObdScorer(_loaded(hillstrom_trained), device="cpu")
    with pytest.raises(TypeError, match="LoadedModel"):
        ObdScorer(obd_trained.module)


def test_device_and_precision_selection():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
        with pytest.raises(ValueError, match="float16 is only supported on CUDA"):
            select_precision(torch.device("cpu"), "float16")
    assert select_precision(torch.device("cpu"), "auto") is None
    with pytest.raises(ValueError, match="precision"):
        select_precision(torch.device("cpu"), "int8")
    with pytest.raises(ValueError, match="device"):
        select_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scorer_matches_cpu(obd_trained, obd_random):
    loaded = _loaded(obd_trained)
    cpu = ObdScorer(loaded, device="cpu")
    gpu = ObdScorer(loaded, device="cuda", precision="float32")
    features = cpu.featurizer.transform(obd_random.user_features[:128], obd_random.affinity[:128])
    np.testing.assert_allclose(gpu.predict(features), cpu.predict(features), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_obd_scorer_matches_eager(obd_trained, obd_random):
    # torch.compile takes ~20 s on 2 CPU cores, hence the slow marker.
    loaded = _loaded(obd_trained)
    eager = ObdScorer(loaded, device="cpu")
    compiled = ObdScorer(loaded, device="cpu", compile=True)
    for b in (5, 64):
        features = eager.featurizer.transform(obd_random.user_features[:b], obd_random.affinity[:b])
        np.testing.assert_allclose(
            compiled.predict(features, 1), eager.predict(features, 1), rtol=1e-5, atol=1e-7
        )

"""The inference path the server uses: device choice, folded modules, batch scorers.

``ObdScorer`` and ``HillstromScorer`` take a ``LoadedModel`` and score whole batches
under ``torch.inference_mode``. The constant part of each model (the OBD item tower,
Platt calibration, the Hillstrom heads) is folded once at construction, so a request
pays for one small user tower and one matmul. Outputs are NumPy float32 on the host.

Precision: ``"auto"`` is float32 on CPU; on CUDA with bfloat16 support it runs the
hidden layers (user tower / trunk) in bfloat16 and always assembles the final logits,
calibration and sigmoid in float32, because click rates near 0.5% would lose their
calibration in bfloat16's 8-bit mantissa.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nudgeserve.models.learn.checkpoint import LoadedModel
from nudgeserve.models.learn.features import HillstromFeatures, ObdFeatures
from nudgeserve.models.learn.nets import ObdClickModel, UpliftModel, compose_outcomes
from nudgeserve.models.specs import HILLSTROM_OUTCOMES

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return chosen


def select_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for the hidden layers, or None for plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "float32":
        return None
    if precision == "float16" and device.type != "cuda":
        raise ValueError("precision float16 is only supported on CUDA")
    return torch.bfloat16 if precision == "bfloat16" else torch.float16


class ObdScoringModule(nn.Module):
    """``ObdClickModel`` with the item tower, biases and calibration folded in.

    forward(user_buckets: int64[B, F], affinity: float32[B, N]) ->
    float32[B, P, N] calibrated click probabilities; equal to the training module's.
    """

    def __init__(self, model: ObdClickModel, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        with torch.no_grad():
            scale = model.calibration_scale.detach().clone()
            shift = model.calibration_shift.detach().clone()
            self.user_embedding = nn.Embedding.from_pretrained(model.user_embedding.weight.clone())
            self.user_mlp = _copy_sequential(model.user_mlp)
            self.register_buffer("user_offsets", model.user_offsets.clone())
            self.register_buffer("item_matrix", (scale * model.item_vectors()).T.contiguous())
            self.register_buffer("item_constant", scale * (model.item_bias + model.bias) + shift)
            self.register_buffer("position_bias", (scale * model.position_bias).view(1, -1, 1))
            self.register_buffer("affinity_weight", scale * model.affinity_weight)
        self.autocast_dtype = autocast_dtype

    def user_vectors(self, user_buckets: torch.Tensor) -> torch.Tensor:
        embedded = self.user_embedding(user_buckets + self.user_offsets).flatten(1)
        if self.autocast_dtype is None:
            return self.user_mlp(embedded)
        with torch.autocast(embedded.device.type, dtype=self.autocast_dtype):
            hidden = self.user_mlp(embedded)
        return hidden.float()

    def item_logits(self, user_buckets: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        """Calibrated logits without the position term: float32[B, N]."""
        return torch.addmm(
            self.item_constant + self.affinity_weight * affinity,
            self.user_vectors(user_buckets),
            self.item_matrix,
        )

    def forward(self, user_buckets: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        logits = self.item_logits(user_buckets, affinity)
        return torch.sigmoid(logits.unsqueeze(1) + self.position_bias)

    def at_position(
        self, user_buckets: torch.Tensor, affinity: torch.Tensor, position: int
    ) -> torch.Tensor:
        """float32[B, N] probabilities for one slot (a third of ``forward``'s work)."""
        logits = self.item_logits(user_buckets, affinity)
        return torch.sigmoid(logits + self.position_bias[0, position])


class UpliftScoringModule(nn.Module):
    """``UpliftModel`` with its per-treatment heads stacked into one matmul.

    forward(categorical: int64[B, C], numeric: float32[B, K]) -> float32[B, 3, T]
    (P(visit), P(conversion), E[spend]) per treatment; equal to the training module's.
    """

    def __init__(self, model: UpliftModel, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        with torch.no_grad():
            self.embedding = nn.Embedding.from_pretrained(model.embedding.weight.clone())
            self.trunk = _copy_sequential(model.trunk)
            self.register_buffer("categorical_offsets", model.categorical_offsets.clone())
            self.register_buffer(
                "head_weight", torch.cat([h.weight for h in model.heads], dim=0).T.contiguous()
            )
            self.register_buffer("head_bias", torch.cat([h.bias for h in model.heads], dim=0))
        self.n_treatments = model.n_treatments
        self.autocast_dtype = autocast_dtype

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(categorical + self.categorical_offsets).flatten(1)
        inputs = torch.cat([embedded, numeric], dim=1)
        if self.autocast_dtype is None:
            shared = self.trunk(inputs)
        else:
            with torch.autocast(inputs.device.type, dtype=self.autocast_dtype):
                shared = self.trunk(inputs)
            shared = shared.float()
        raw = torch.addmm(self.head_bias, shared, self.head_weight)
        return compose_outcomes(raw.view(-1, self.n_treatments, 3))


class HostObdPath:
    """``ObdScoringModule``'s arithmetic in NumPy float32, for small batches on the CPU.

    A batch of one context is a few thousand multiply-adds; through torch each of its
    eight operators pays a dispatch of several microseconds, more than the arithmetic.
    NumPy computes the same function (same folded weights, float32) with a fraction of
    that overhead; results equal the module's to float32 rounding (the summation order
    differs). ``ObdScorer`` measures both at warm-up and uses this one only for the batch
    sizes where it is faster (``host_max_batch``).
    """

    def __init__(self, module: ObdScoringModule) -> None:
        def host(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        self.embedding = host(module.user_embedding.weight)
        self.offsets = module.user_offsets.detach().cpu().numpy().astype(np.int64)
        self.layers: list[tuple[np.ndarray, np.ndarray] | None] = []
        for layer in module.user_mlp:
            if isinstance(layer, nn.Linear):
                self.layers.append((host(layer.weight).T.copy(), host(layer.bias)))
            elif isinstance(layer, nn.ReLU):
                self.layers.append(None)
            else:  # pragma: no cover - the model's tower is Linear/ReLU only
                raise TypeError(f"no host path for {type(layer).__name__}")
        self.item_matrix = host(module.item_matrix)
        self.item_constant = host(module.item_constant)
        self.position_bias = host(module.position_bias).reshape(-1)
        self.affinity_weight = np.float32(module.affinity_weight.item())

    def item_logits(self, user_buckets: np.ndarray, affinity: np.ndarray) -> np.ndarray:
        x = self.embedding[user_buckets + self.offsets].reshape(user_buckets.shape[0], -1)
        for layer in self.layers:
            if layer is None:
                np.maximum(x, 0.0, out=x)
            else:
                x = x @ layer[0]
                x += layer[1]
        logits = x @ self.item_matrix
        logits += self.item_constant
        logits += self.affinity_weight * affinity
        return logits

    def predict(
        self, user_buckets: np.ndarray, affinity: np.ndarray, position: int | None
    ) -> np.ndarray:
        """float32[B, N] probabilities at ``position``, or float32[B, P, N] for None."""
        logits = self.item_logits(user_buckets, affinity)
        if position is None:
            logits = logits[:, None, :] + self.position_bias[None, :, None]
        else:
            logits += self.position_bias[position]
        # sigmoid(x) = 1 / (1 + exp(-x)), accurate to float32 rounding for the small
        # probabilities clicks have (the tanh form loses them to cancellation). -x is
        # capped at 88 so exp stays finite (below it the probability underflows anyway).
        np.negative(logits, out=logits)
        np.minimum(logits, 88.0, out=logits)
        np.exp(logits, out=logits)
        logits += 1.0
        np.reciprocal(logits, out=logits)
        return logits


def _copy_sequential(seq: nn.Sequential) -> nn.Sequential:
    copy = nn.Sequential(
        *[
            type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m)()
            for m in seq
        ]
    )
    copy.load_state_dict(seq.state_dict())
    return copy.requires_grad_(False)


class _Scorer:
    def __init__(
        self,
        loaded: LoadedModel,
        kind: str,
        device: str | torch.device,
        precision: str,
        compile: bool,
    ) -> None:
        if not isinstance(loaded, LoadedModel):
            raise TypeError(f"loaded must be a LoadedModel, got {type(loaded).__name__}")
        if loaded.kind != kind:
            raise ValueError(f"loaded is a {loaded.kind!r} model; this scorer needs {kind!r}")
        self.loaded = loaded
        self.device = select_device(device)
        self.autocast_dtype = select_precision(self.device, precision)
        self.featurizer = loaded.featurizer()
        self.compiled = compile

    def _finish(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device).eval()
        if self.compiled:
            module = torch.compile(module, dynamic=True)
        return module

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor


class ObdScorer(_Scorer):
    """Click probabilities for every catalog item, a whole batch of contexts at a time.

    loaded: an ``obd_click`` checkpoint (``load_checkpoint``).
    device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda[:i]"``.
    precision: see the module docstring; ``compile``: wrap the module in ``torch.compile``.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(loaded, "obd_click", device, precision, compile)
        model = loaded.module
        assert isinstance(model, ObdClickModel)
        self.n_items = model.n_items
        self.n_positions = model.n_positions
        folded = ObdScoringModule(model, self.autocast_dtype).to(self.device).eval()
        self.module = self._finish(folded)
        self._at_position = (
            torch.compile(folded.at_position, dynamic=True) if compile else folded.at_position
        )
        # The NumPy path (``HostObdPath``): possible on the CPU in float32; used up to
        # this batch size once ``warmup`` measured it faster (0: never).
        self.host = (
            HostObdPath(folded)
            if self.device.type == "cpu" and self.autocast_dtype is None and not compile
            else None
        )
        self.host_max_batch = 0
        self.host_timings_us: dict[int, tuple[float, float]] = {}

    def predict(self, features: ObdFeatures, position: int | None = None) -> np.ndarray:
        """features (from ``featurizer.transform``) -> click probabilities.

        Returns float32[B, n_items] for slot ``position`` (0-based), or
        float32[B, n_positions, n_items] when ``position`` is None.
        """
        if position is not None and not 0 <= position < self.n_positions:
            raise ValueError(f"position must be in [0, {self.n_positions}), got {position}")
        if features.user_buckets.shape[0] == 0:
            shape = (
                (0, self.n_items) if position is not None else (0, self.n_positions, self.n_items)
            )
            return np.zeros(shape, dtype=np.float32)
        if features.user_buckets.shape[0] <= self.host_max_batch:
            return self.host.predict(
                np.asarray(features.user_buckets, dtype=np.int64),
                np.asarray(features.affinity, dtype=np.float32),
                position,
            )
        return self._predict_torch(features, position)

    def _predict_torch(self, features: ObdFeatures, position: int | None) -> np.ndarray:
        users = self._tensor(features.user_buckets, torch.long)
        affinity = self._tensor(features.affinity, torch.float32)
        with torch.inference_mode():
            if position is None:
                probs = self.module(users, affinity)
            else:
                probs = self._at_position(users, affinity, position)
            return probs.float().cpu().numpy()

    def score(
        self, user_features: Any, affinity: Any = None, position: int | None = None
    ) -> np.ndarray:
        """Featurize raw contexts then ``predict`` (see ``ObdFeaturizer.transform``)."""
        return self.predict(self.featurizer.transform(user_features, affinity), position)

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 64)) -> None:
        """Run each batch size once so the first request pays no first-call cost; with a
        host path, measure it against torch at 1, 2, 4, ... up to the largest batch size
        and use it up to the last size where it was faster (``host_max_batch``)."""
        n_fields = len(self.featurizer.spec.user_feature_names)

        def example(b: int) -> ObdFeatures:
            rng = np.random.default_rng(b)
            return ObdFeatures(
                rng.integers(0, 2, size=(b, n_fields), dtype=np.int64),
                rng.random((b, self.n_items), dtype=np.float32),
            )

        for b in batch_sizes:
            self._predict_torch(example(b), None)
        if self.host is None:
            return
        self.host_max_batch = 0
        self.host_timings_us = {}
        b, largest = 1, max(batch_sizes)
        while b <= largest:
            features = example(b)
            slot = b % self.n_positions
            torch_us = _median_us(lambda f=features, s=slot: self._predict_torch(f, s))
            host_us = _median_us(
                lambda f=features, s=slot: self.host.predict(f.user_buckets, f.affinity, s)
            )
            self.host_timings_us[b] = (host_us, torch_us)
            if host_us >= torch_us:
                break
            self.host_max_batch = b
            b *= 2


def _median_us(fn: Any, repeats: int = 15) -> float:
    """Median microseconds of ``fn()`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


@dataclass(frozen=True)
class UpliftPrediction:
    """Predicted outcomes of B customers under each treatment.

    visit, conversion: float32[B, T] probabilities; spend: float32[B, T] expected dollars.
    treatments: the T arm names in column order; control_index: the control's column.
    """

    visit: np.ndarray
    conversion: np.ndarray
    spend: np.ndarray
    treatments: tuple[str, ...]
    control_index: int

    def outcome(self, name: str) -> np.ndarray:
        """float32[B, T] predictions of ``visit``, ``conversion`` or ``spend``."""
        if name not in HILLSTROM_OUTCOMES:
            raise ValueError(f"outcome must be one of {HILLSTROM_OUTCOMES}, got {name!r}")
        return getattr(self, name)

    def uplift(self, name: str = "conversion") -> np.ndarray:
        """float32[B, T]: prediction under each treatment minus under the control
        (the control's column is 0)."""
        values = self.outcome(name)
        return values - values[:, self.control_index : self.control_index + 1]


class HillstromScorer(_Scorer):
    """Per-treatment visit / conversion / spend predictions for a batch of customers."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(loaded, "hillstrom_uplift", device, precision, compile)
        model = loaded.module
        assert isinstance(model, UpliftModel)
        self.treatments = loaded.spec.treatments
        self.control_index = loaded.spec.control_index
        self.module = self._finish(UpliftScoringModule(model, self.autocast_dtype))

    def predict(self, features: HillstromFeatures) -> UpliftPrediction:
        """features (from ``featurizer.transform``) -> ``UpliftPrediction`` ([B, T] each)."""
        n = len(self.treatments)
        if features.categorical.shape[0] == 0:
            empty = np.zeros((0, n), dtype=np.float32)
            return UpliftPrediction(empty, empty, empty, self.treatments, self.control_index)
        with torch.inference_mode():
            out = self.module(
                self._tensor(features.categorical, torch.long),
                self._tensor(features.numeric, torch.float32),
            )
            out = out.float().cpu().numpy()
        return UpliftPrediction(
            out[:, 0], out[:, 1], out[:, 2], self.treatments, self.control_index
        )

    def score(self, columns: Mapping[str, Any]) -> UpliftPrediction:
        """Featurize raw customer columns then ``predict``."""
        return self.predict(self.featurizer.transform(columns))

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 64)) -> None:
        """Run each batch size once so the first request pays no first-call cost."""
        spec = self.featurizer.spec
        for b in batch_sizes:
            self.predict(
                HillstromFeatures(
                    np.zeros((b, len(spec.categorical_names)), dtype=np.int64),
                    np.zeros((b, len(spec.numeric_names)), dtype=np.float32),
                )
            )

"""OBD item selection: click probabilities of every catalog item (and of items given
inline by their features) at the configured slot, then the policy picks the slate.

The replay vector a decision logs (float32): the hashed user fields
(``n_user_fields``), the raw affinities (``n_items``, zeros when none were sent), then
per inline candidate ``[item_feature_0, 3 hashed categorical buckets]``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import numpy as np

from nudgeserve.serve.config import ObdUseCase, Policy
from nudgeserve.serve.engine.batch_engine import (
    BatchEngine,
    catalog_mask,
    check_outcomes,
    slate_outcomes,
)
from nudgeserve.serve.engine.types import DecisionItem, DecisionOutcome, InferOutcome, StageTimes
from nudgeserve.serve.protocol.decide import ObdContext, ObdItemFeatures


class ObdEngine(BatchEngine):
    """OBD item selection: click probabilities of every catalog item (and of inline items)
    at ``slot``, then the policy picks the slate."""

    settings: ObdUseCase

    def load(self, device: str | None = None, warm: bool = True) -> dict[str, float]:
        from nudgeserve.models import ObdScorer

        self.loaded = self._load_checkpoint()
        self.scorer = ObdScorer(
            self.loaded, device=device or self.settings.device, precision=self.settings.precision
        )
        self.featurizer = self.scorer.featurizer
        self.n_items = self.scorer.n_items
        self._inline = _InlineItems(self.loaded, self.settings.slot)
        import torch

        with torch.inference_mode():
            self._catalog_vectors = self.loaded.module.item_vectors().numpy().astype(np.float64)
        self.linear_prior = initial_linear_bandit(self._catalog_vectors.shape[1])
        return self.warmup() if warm else {}

    def example_item(self, policy: Policy) -> DecisionItem:
        n_fields = self.info.n_user_fields
        return DecisionItem(
            context=ObdContext(user_features=["warmup"] * n_fields, affinity=None),
            candidates=None,
            inline=(ObdItemFeatures(0.0, "a", "b", "c"),),
            excluded=np.zeros(0, dtype=np.int64),
            k=min(self.info.default_k, self.n_items),
            policy=policy,
            seed=0,
        )

    def example_inputs(self) -> dict[str, np.ndarray]:
        return {
            "user_features": np.full((1, self.info.n_user_fields), "warmup", dtype=object),
            "affinity": np.zeros((1, self.n_items), dtype=np.float32),
        }

    def _features(self, users: np.ndarray, affinity: np.ndarray | None):
        return self.featurizer.transform(users, affinity)

    def decide_batch(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        t0 = time.perf_counter()
        n = len(items)
        users = np.empty((n, self.info.n_user_fields), dtype=object)
        affinity = None
        for row, item in enumerate(items):
            users[row] = item.context.user_features
            if item.context.affinity is not None:
                if affinity is None:
                    affinity = np.zeros((n, self.n_items), dtype=np.float32)
                affinity[row] = item.context.affinity
        features = self._features(users, affinity)
        # The replay vector (module docstring): hashed user fields and raw affinities.
        head = np.zeros((n, self.info.n_user_fields + self.n_items), dtype=np.float32)
        head[:, : self.info.n_user_fields] = features.user_buckets
        if affinity is not None:
            head[:, self.info.n_user_fields :] = affinity
        replay = list(head)
        t1 = time.perf_counter()
        probs = self.scorer.predict(features, position=self.settings.slot)
        n_inline = max(len(item.inline) for item in items)
        if n_inline:
            scores = np.full((n, self.n_items + n_inline), np.nan, dtype=np.float32)
            scores[:, : self.n_items] = probs
            for row, item in enumerate(items):
                if item.inline:
                    table = self._inline.table(item.inline)
                    scores[row, self.n_items : self.n_items + len(item.inline)] = (
                        self._inline.scores(features.user_buckets[row], table)
                    )
                    inline_part = np.concatenate(
                        [
                            np.asarray([[f.item_feature_0] for f in item.inline], np.float32),
                            table.categorical_buckets.astype(np.float32),
                        ],
                        axis=1,
                    )
                    replay[row] = np.concatenate([head[row], inline_part.reshape(-1)])
        else:
            scores = probs
        t2 = time.perf_counter()
        excluded = catalog_mask(items, n, scores.shape[1], self.n_items)

        def linear_features(rows: np.ndarray) -> np.ndarray:
            return self.bandit_features(features.user_buckets[rows], scores[rows], items, rows)

        idx, prop = self._select(scores, items, excluded, linear_features)
        t3 = time.perf_counter()
        times = StageTimes(n, t1 - t0, t2 - t1, t3 - t2)
        return check_outcomes(slate_outcomes(items, scores, idx, prop, times, replay, self.info), n)

    def bandit_features(
        self,
        user_buckets: np.ndarray,
        scores: np.ndarray,
        items: list[DecisionItem] | None = None,
        rows: np.ndarray | None = None,
        inline_tables: list | None = None,
    ) -> np.ndarray:
        """The linear bandit's context-action features (``interaction_features``):
        float64[R, N, dim + 1] with ``x[r, n] = [score, u[r] * v[n]]``, ``u`` the user
        tower's vector and ``v`` the item's (catalog, then the row's inline items).

        user_buckets: int64[R, F]; scores: float32[R, N] (NaN columns, which no policy
        may choose, get 0); items / rows: the batch's items and which of them these rows
        are (for their inline items), or inline_tables: one ``ObdItemTable`` (or None)
        per row.
        """
        import torch

        m = self.loaded.module
        with torch.inference_mode():
            user = m.user_vectors(torch.from_numpy(np.ascontiguousarray(user_buckets)))
        u = user.numpy().astype(np.float64)
        n_rows, n_cols = scores.shape
        dim = u.shape[1]
        vectors = np.zeros((n_rows, n_cols, dim))
        vectors[:, : self.n_items] = self._catalog_vectors
        for r in range(n_rows):
            if inline_tables is not None:
                table = inline_tables[r]
            else:
                inline = items[int(rows[r])].inline
                table = self._inline.table(inline) if inline else None
            if table is not None:
                v = self._inline.item_vectors(table).numpy()
                vectors[r, self.n_items : self.n_items + v.shape[0]] = v
        x = np.empty((n_rows, n_cols, dim + 1))
        x[:, :, 0] = np.nan_to_num(scores, nan=0.0)
        x[:, :, 1:] = u[:, None, :] * vectors
        return x

    def replay_scores(self, features: np.ndarray, candidates: list[list[str]]) -> list:
        """Scores this model gives every candidate of logged decisions.

        features: the logged replay vectors (module docstring), one per decision;
        candidates: each decision's candidate ids as logged. Returns one float64[c] per
        decision (inline candidates scored from their logged features).
        """
        n_fields = self.info.n_user_fields
        n = len(features)
        head = np.stack([np.asarray(f[: n_fields + self.n_items], np.float32) for f in features])
        buckets = head[:, :n_fields].astype(np.int64)
        from nudgeserve.models import ObdFeatures

        obd = ObdFeatures(buckets, self.featurizer.transform_affinity(head[:, n_fields:], n))
        probs = self.scorer.predict(obd, position=self.settings.slot)
        index = {str(x): j for j, x in enumerate(self.info.catalog)}
        out = []
        for row, ids in enumerate(candidates):
            tail = np.asarray(features[row][n_fields + self.n_items :], np.float32).reshape(-1, 4)
            inline_scores = (
                self._inline.scores_from_table(buckets[row], tail) if len(tail) else None
            )
            values = np.empty(len(ids), dtype=np.float64)
            j_inline = 0
            for c, item_id in enumerate(ids):
                j = index.get(item_id)
                if j is None:
                    values[c] = inline_scores[j_inline]
                    j_inline += 1
                else:
                    values[c] = probs[row, j]
            out.append(values)
        return out

    def infer_batch(self, requests: list[dict[str, np.ndarray]]) -> list[InferOutcome]:
        t0 = time.perf_counter()
        sizes = [r["user_features"].shape[0] for r in requests]
        users = np.concatenate([r["user_features"] for r in requests], axis=0)
        affinity = None
        if any("affinity" in r for r in requests):
            affinity = np.concatenate(
                [
                    r["affinity"]
                    if "affinity" in r
                    else np.zeros((s, self.n_items), dtype=np.float32)
                    for r, s in zip(requests, sizes, strict=True)
                ],
                axis=0,
            )
        features = self._features(users, affinity)
        t1 = time.perf_counter()
        probs = self.scorer.predict(features)
        t2 = time.perf_counter()
        bounds = np.cumsum([0, *sizes])
        times = StageTimes(len(requests), t1 - t0, t2 - t1, 0.0)
        out = [
            InferOutcome({"click_prob": probs[a:b]}, times)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return check_outcomes(out, len(requests))


class _InlineItems:
    """Click probabilities of items given by their features rather than a catalog id.

    A new item has no id embedding and no learned bias, so its vector is the sum of its
    hashed-feature embeddings and the projection of its standardised numeric features —
    exactly the catalog item vector minus the id terms — and its logit is the dot product
    with the user vector plus the global and slot biases, calibrated like catalog items.
    Features go through the model's own featurizer (``item_table``) so hashing and
    standardisation match training.
    """

    def __init__(self, loaded: Any, slot: int) -> None:
        import torch

        from nudgeserve.models import ObdFeaturizer

        self._torch = torch
        self.model = loaded.module
        self.spec = loaded.spec
        self.slot = slot
        self._ObdFeaturizer = ObdFeaturizer

    def table(self, inline: tuple[ObdItemFeatures, ...]):
        """The ``ObdItemTable`` of ``inline`` items (hashed and standardised like the
        catalog's)."""
        from nudgeserve.models import ObdItemContext

        n = len(inline)
        spec = msgspec.structs.replace(self.spec, n_items=n)
        numeric = np.asarray([[f.item_feature_0] for f in inline], dtype=np.float32)
        categorical = np.asarray(
            [[f.item_feature_1, f.item_feature_2, f.item_feature_3] for f in inline], dtype=object
        )
        return self._ObdFeaturizer(spec).item_table(
            ObdItemContext(
                item_id=np.arange(n, dtype=np.int64),
                numeric=numeric,
                categorical=categorical,
                categorical_buckets=np.zeros((n, 3), dtype=np.int64),
            )
        )

    def item_vectors(self, table):
        """float32[n, dim] tensor for inline items given their ``ObdItemTable``."""
        torch = self._torch
        m = self.model
        buckets = torch.from_numpy(np.ascontiguousarray(table.categorical_buckets))
        with torch.inference_mode():
            embedded = m.item_feature_embedding(buckets + m.item_offsets).sum(dim=1)
            return embedded + m.item_numeric_projection(
                torch.from_numpy(np.ascontiguousarray(table.numeric))
            )

    def scores(self, user_buckets: np.ndarray, table) -> np.ndarray:
        """float32[n] click probabilities of inline items (their ``ObdItemTable``) for one
        user (``user_buckets``: int64[F])."""
        torch = self._torch
        m = self.model
        with torch.inference_mode():
            user = m.user_vectors(torch.from_numpy(np.ascontiguousarray(user_buckets[None, :])))
            logits = self.item_vectors(table) @ user[0] + m.bias + m.position_bias[self.slot]
            probs = torch.sigmoid(m.calibration_scale * logits + m.calibration_shift)
        return probs.numpy().astype(np.float32)

    def scores_from_table(self, user_buckets: np.ndarray, logged: np.ndarray) -> np.ndarray:
        """``scores`` from logged inline features (``logged_table``)."""
        return self.scores(user_buckets, self.logged_table(logged))

    def logged_table(self, logged: np.ndarray):
        """The ``ObdItemTable`` of inline items from their logged features: float32[n, 4]
        rows of raw ``item_feature_0`` and the three hashed categorical buckets."""
        from nudgeserve.kernels import standardize
        from nudgeserve.models import ObdItemTable

        mean = np.asarray(self.spec.item_numeric_mean, np.float32)
        std = np.asarray(self.spec.item_numeric_std, np.float32)
        numeric = standardize(np.ascontiguousarray(logged[:, :1], dtype=np.float32), mean, std)
        return ObdItemTable(
            categorical_buckets=logged[:, 1:].astype(np.int64),
            numeric=np.ascontiguousarray(numeric, dtype=np.float32),
        )


def initial_linear_bandit(dim: int, ridge: float = 1.0) -> Any:
    """The linear bandit before any feedback: features ``[score, u * v]`` (``dim`` + 1) and
    the prior mean ``e_0``, so it starts out ranking exactly as the model does."""
    from nudgeserve.models.policies.linear_bandit import LinearBandit

    prior = np.zeros(dim + 1)
    prior[0] = 1.0
    return LinearBandit(dim + 1, ridge=ridge, prior_mean=prior)

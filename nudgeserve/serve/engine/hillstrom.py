"""E-mail interventions on the Hillstrom uplift model: each treatment's expected net gain
over the control, then the policy picks; or, for a use case with ``interventions``, the
intervention rule (``interventions.InterventionEngine``) decides.

The replay vector a decision logs (float32): the raw numeric columns, then the hashed
categorical buckets.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nudgeserve.serve.config import HillstromUseCase, Policy
from nudgeserve.serve.engine.batch_engine import (
    BatchEngine,
    catalog_mask,
    check_outcomes,
    slate_outcomes,
)
from nudgeserve.serve.engine.describe import ensemble_path
from nudgeserve.serve.engine.interventions import InterventionEngine
from nudgeserve.serve.engine.types import DecisionItem, DecisionOutcome, InferOutcome, StageTimes
from nudgeserve.serve.protocol.decide import HillstromContext


class HillstromEngine(BatchEngine):
    """E-mail intervention choice: each treatment's expected net gain over the control,
    then the policy picks (the control scores ``min_gain``)."""

    settings: HillstromUseCase

    def load(self, device: str | None = None, warm: bool = True) -> dict[str, float]:
        """Load weights onto ``device`` and warm up (see ``BatchEngine.load``). An
        intervention use case also loads its uplift ensemble (``interventions``); its
        daily caps start on a ledger of this process (``set_ledger`` shares one between
        replicas). Without ``interventions`` the policy selects on point estimates."""
        from nudgeserve.models import HillstromScorer

        self.loaded = self._load_checkpoint()
        self.scorer = HillstromScorer(
            self.loaded, device=device or self.settings.device, precision=self.settings.precision
        )
        if self.settings.interventions is not None:
            self._interventions = self._intervention_engine(device or self.settings.device)
        self.featurizer = self.scorer.featurizer
        spec = self.loaded.spec
        self.treatments = tuple(spec.treatments)
        self.control = spec.control_index
        self.costs = np.asarray(
            [self.settings.treatment_costs.get(t, 0.0) for t in self.treatments], dtype=np.float32
        )
        self.numeric_names = tuple(spec.numeric_names)
        self.categorical_names = tuple(spec.categorical_names)
        return self.warmup() if warm else {}

    def _intervention_engine(self, device: str) -> InterventionEngine:
        from nudgeserve.models.learn.uplift_ensemble import load_uplift_ensemble
        from nudgeserve.models.policies.intervention import BudgetLedger

        settings = self.settings.interventions
        rule = settings.rule_config()
        ledger = (
            BudgetLedger(rule.daily_caps, utc_offset_s=settings.day_utc_offset_s)
            if rule.daily_caps
            else None
        )
        return InterventionEngine(
            rule,
            load_uplift_ensemble(ensemble_path(self.settings), device=device),
            level=settings.level,
            chunk_rows=settings.chunk_rows,
            ledger=ledger,
        )

    def warmup(self) -> dict[str, float]:
        took = super().warmup()
        if self.interventions is not None:
            t0 = time.perf_counter()
            self.interventions.warmup((1, self.settings.batching.max_batch_size))
            took["interventions"] = time.perf_counter() - t0
        return took

    def example_item(self, policy: Policy) -> DecisionItem:
        return DecisionItem(
            context=HillstromContext(1.0, 100.0, 1.0, 0.0, 0.0, "2) $100 - $200", "Urban", "Web"),
            candidates=None,
            inline=(),
            excluded=np.zeros(0, dtype=np.int64),
            k=1,
            policy=policy,
            seed=0,
        )

    def example_inputs(self) -> dict[str, np.ndarray]:
        return {
            "numeric": np.ones((1, len(self.numeric_names)), dtype=np.float32),
            "categorical": np.full((1, len(self.categorical_names)), "Web", dtype=object),
        }

    def net_gain(self, columns: dict[str, Any]) -> np.ndarray:
        """float32[B, T]: uplift in the objective x value - cost; the control gets
        ``min_gain``."""
        prediction = self.scorer.predict(self.featurizer.transform(columns))
        return self._gain(prediction)

    def _gain(self, prediction) -> np.ndarray:
        s = self.settings
        gain = prediction.uplift(s.objective) * np.float32(s.value_per_unit) - self.costs
        gain[:, self.control] = s.min_gain
        return np.ascontiguousarray(gain, dtype=np.float32)

    def decide_batch(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        if self.interventions is not None:
            return self._decide_interventions(items)
        t0 = time.perf_counter()
        n = len(items)
        columns: dict[str, Any] = {
            name: [getattr(item.context, name) for item in items]
            for name in (*self.numeric_names, *self.categorical_names)
        }
        features = self.featurizer.transform(columns)
        # The replay vector (module docstring): raw numeric columns, hashed categoricals.
        replay = np.empty((n, len(self.numeric_names) + len(self.categorical_names)), np.float32)
        for j, name in enumerate(self.numeric_names):
            replay[:, j] = columns[name]
        replay[:, len(self.numeric_names) :] = features.categorical
        t1 = time.perf_counter()
        scores = self._gain(self.scorer.predict(features))
        t2 = time.perf_counter()
        excluded = catalog_mask(items, n, scores.shape[1], len(self.treatments))
        idx, prop = self._select(scores, items, excluded)
        t3 = time.perf_counter()
        times = StageTimes(n, t1 - t0, t2 - t1, t3 - t2)
        return check_outcomes(
            slate_outcomes(items, scores, idx, prop, times, list(replay), self.info), n
        )

    def _decide_interventions(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        """The intervention rule on a batch of decisions: one ensemble pass, one budget
        allocation. A request without ``unit_id`` is its own unit (its decision id)."""
        t0 = time.perf_counter()
        n = len(items)
        engine = self.interventions
        columns: dict[str, Any] = {
            name: [getattr(item.context, name) for item in items] for name in engine.field_names
        }
        features, replay = engine.featurize(columns)
        unit_ids = np.asarray(
            [
                (item.meta.unit_id or item.meta.decision_id) if item.meta is not None else ""
                for item in items
            ]
        )
        t1 = time.perf_counter()
        prediction = engine.predict(features)
        t2 = time.perf_counter()
        # Items without meta are warm-up: nothing is served, so no budget is spent.
        spend = all(item.meta is not None for item in items)
        batch = engine.decide_prediction(prediction, unit_ids, replay, spend_budget=spend)
        results = batch.results()
        t3 = time.perf_counter()
        times = StageTimes(n, t1 - t0, t2 - t1, t3 - t2)
        d = batch.decisions
        action = d.action.tolist()
        value = d.expected_net_value.tolist()
        prop = d.propensity.tolist()
        info = self.info
        out = [
            DecisionOutcome(
                indices=np.asarray([action[i]], dtype=np.int64),
                scores=np.asarray([value[i]], dtype=np.float32),
                propensities=np.asarray([prop[i]], dtype=np.float64),
                times=times,
                features=replay[i],
                model_version=info.version,
                model_checkpoint=info.checkpoint_id,
                intervention=results[i],
            )
            for i in range(n)
        ]
        return check_outcomes(out, n)

    def replay_scores(self, features: np.ndarray, candidates: list[list[str]]) -> list:
        """Scores (net gains) this model gives every candidate of logged decisions.

        features: the logged replay vectors (module docstring); candidates: each
        decision's candidate ids as logged. Returns one float64[c] per decision.
        """
        from nudgeserve.models import HillstromFeatures

        x = np.stack([np.asarray(f, np.float32) for f in features])
        n, n_num = x.shape[0], len(self.numeric_names)
        # The categorical columns are logged hashed; the placeholders only fill the
        # featurizer's string columns, whose buckets are replaced by the logged ones.
        columns: dict[str, Any] = {name: x[:, j] for j, name in enumerate(self.numeric_names)}
        columns.update({name: [""] * n for name in self.categorical_names})
        numeric = self.featurizer.transform(columns).numeric
        gains = self._gain(
            self.scorer.predict(HillstromFeatures(x[:, n_num:].astype(np.int64), numeric))
        )
        index = {t: j for j, t in enumerate(self.treatments)}
        return [
            gains[row, [index[c] for c in ids]].astype(np.float64)
            for row, ids in enumerate(candidates)
        ]

    def infer_batch(self, requests: list[dict[str, np.ndarray]]) -> list[InferOutcome]:
        t0 = time.perf_counter()
        sizes = [r["numeric"].shape[0] for r in requests]
        numeric = np.concatenate([r["numeric"] for r in requests], axis=0)
        categorical = np.concatenate([r["categorical"] for r in requests], axis=0)
        columns: dict[str, Any] = {n: numeric[:, j] for j, n in enumerate(self.numeric_names)}
        columns.update({n: categorical[:, j] for j, n in enumerate(self.categorical_names)})
        features = self.featurizer.transform(columns)
        t1 = time.perf_counter()
        prediction = self.scorer.predict(features)
        t2 = time.perf_counter()
        bounds = np.cumsum([0, *sizes])
        times = StageTimes(len(requests), t1 - t0, t2 - t1, 0.0)
        out = [
            InferOutcome(
                {
                    "visit": prediction.visit[a:b],
                    "conversion": prediction.conversion[a:b],
                    "spend": prediction.spend[a:b],
                },
                times,
            )
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return check_outcomes(out, len(requests))

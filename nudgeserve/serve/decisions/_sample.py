"""Synthetic decisions and feedback shaped like the Open Bandit Dataset's "all" campaign.

Shared by the tests and ``benchmarks/decision_log.py`` so both exercise records of the
size the server writes: 80 candidate items, 3 slots, an 84-float context vector (the
dataset's 4 hashed user features and 80 user-item affinities), uniform-random logging
propensities (1/80, as in the dataset's ``random`` policy) and rare clicks.
"""

from __future__ import annotations

import numpy as np

from nudgeserve.serve.decisions._records import DecisionRecord, FeedbackEvent


def sample_decisions(
    n: int,
    *,
    seed: int = 0,
    n_candidates: int = 80,
    n_slots: int = 3,
    n_features: int = 84,
    start_time: float = 1_700_000_000.0,
    prefix: str = "d",
) -> list[DecisionRecord]:
    """``n`` decision records with ids ``f"{prefix}{i}"``, one second apart."""
    if n_slots > n_candidates:
        raise ValueError(f"n_slots ({n_slots}) must be <= n_candidates ({n_candidates})")
    rng = np.random.default_rng(seed)
    candidates = [str(i) for i in range(n_candidates)]
    chosen = np.argsort(rng.random((n, n_candidates)), axis=1)[:, :n_slots]
    scores = rng.random((n, n_slots)).round(6)
    features = rng.random((n, n_features)).astype(np.float32)
    p = 1.0 / n_candidates
    out = []
    for i in range(n):
        out.append(
            DecisionRecord(
                decision_id=f"{prefix}{i}",
                time=start_time + i,
                unit_id=f"u{i % 997}",
                experiment="obd",
                variant="random" if i % 2 else "bts",
                model_version="v1",
                policy="uniform_random",
                candidates=candidates,
                actions=[candidates[j] for j in chosen[i]],
                scores=scores[i].tolist(),
                propensities=[p] * n_slots,
                features=features[i].tolist(),
                use_case="obd",
                model_checkpoint="0123456789ab",
            )
        )
    return out


def sample_clicks(
    records: list[DecisionRecord], *, rate: float = 0.05, seed: int = 0
) -> list[FeedbackEvent]:
    """One click event, at a random slot 1-60 s after the decision, for a ``rate``
    fraction of ``records``; event ids are ``f"click-{decision_id}"``."""
    rng = np.random.default_rng(seed)
    events = []
    for rec in records:
        if rng.random() < rate:
            slot = int(rng.integers(len(rec.actions)))
            events.append(
                FeedbackEvent(
                    decision_id=rec.decision_id,
                    event_id=f"click-{rec.decision_id}",
                    kind="click",
                    time=rec.time + float(rng.uniform(1, 60)),
                    action=rec.actions[slot],
                )
            )
    return events

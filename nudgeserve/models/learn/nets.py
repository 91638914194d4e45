"""The torch models: an OBD click model and a Hillstrom multi-treatment uplift model.

Plain ``nn.Module``s: no HTTP, no Ray, no file I/O. Their ``forward`` is the training
reference; ``inference.py`` folds constant parts into a faster serving module that is
tested to give the same outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class ObdClickModel(nn.Module):
    """P(click | context, item, position) for every catalog item in one batched pass.

    logit[b, p, i] = <user_tower(user_buckets[b]), item_vector[i]> + item_bias[i]
                     + position_bias[p] + affinity_weight * affinity[b, i] + bias
    prob = sigmoid(calibration_scale * logit + calibration_shift)

    The user tower concatenates one embedding per hashed user field and runs a small MLP;
    an item vector sums an id embedding, one embedding per hashed item field and a
    projection of the standardised numeric item features. The item table (the
    catalog's hashed/numeric features) is stored in buffers so a checkpoint carries it.
    Calibration is a Platt scaling fitted after training on held-out data (identity
    until then).
    """

    def __init__(
        self,
        *,
        item_categorical_buckets: torch.Tensor,
        item_numeric: torch.Tensor,
        n_positions: int,
        n_user_fields: int,
        n_buckets: int,
        dim: int = 8,
        hidden: int = 16,
        base_rate: float = 0.005,
    ) -> None:
        super().__init__()
        n_items, n_item_fields = item_categorical_buckets.shape
        if item_numeric.shape[0] != n_items:
            raise ValueError(
                f"item_numeric has {item_numeric.shape[0]} rows, expected n_items={n_items}"
            )
        self.n_items = int(n_items)
        self.n_positions = int(n_positions)
        self.n_user_fields = int(n_user_fields)
        self.n_buckets = int(n_buckets)
        self.dim = int(dim)
        self.user_embedding = nn.Embedding(n_user_fields * n_buckets, dim)
        self.user_mlp = nn.Sequential(
            nn.Linear(n_user_fields * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        self.item_embedding = nn.Embedding(n_items, dim)
        self.item_feature_embedding = nn.Embedding(n_item_fields * n_buckets, dim)
        self.item_numeric_projection = nn.Linear(item_numeric.shape[1], dim, bias=False)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.position_bias = nn.Parameter(torch.zeros(n_positions))
        self.affinity_weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.tensor([_logit(base_rate)]))
        self.register_buffer("user_offsets", torch.arange(n_user_fields) * n_buckets)
        self.register_buffer("item_offsets", torch.arange(n_item_fields) * n_buckets)
        self.register_buffer("item_categorical_buckets", item_categorical_buckets.long().clone())
        self.register_buffer("item_numeric", item_numeric.float().clone())
        self.register_buffer("calibration_scale", torch.ones(1))
        self.register_buffer("calibration_shift", torch.zeros(1))
        # Small embeddings: the model starts at the base rate and only moves where the
        # (rare) clicks say so.
        for table in (self.user_embedding, self.item_embedding, self.item_feature_embedding):
            nn.init.normal_(table.weight, std=0.05)

    def user_vectors(self, user_buckets: torch.Tensor) -> torch.Tensor:
        """user_buckets: int64[B, n_user_fields] -> float32[B, dim]."""
        embedded = self.user_embedding(user_buckets + self.user_offsets)
        return self.user_mlp(embedded.flatten(1))

    def item_vectors(self) -> torch.Tensor:
        """float32[n_items, dim] for the stored item table."""
        features = self.item_feature_embedding(self.item_categorical_buckets + self.item_offsets)
        return (
            self.item_embedding.weight
            + features.sum(dim=1)
            + self.item_numeric_projection(self.item_numeric)
        )

    def logits(self, user_buckets: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits float32[B, n_positions, n_items].

        user_buckets: int64[B, n_user_fields]; affinity: float32[B, n_items] (transformed).
        """
        item_part = self.user_vectors(user_buckets) @ self.item_vectors().T
        item_part = item_part + self.item_bias + self.affinity_weight * affinity + self.bias
        return item_part.unsqueeze(1) + self.position_bias.view(1, -1, 1)

    def forward(self, user_buckets: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        """Calibrated click probabilities float32[B, n_positions, n_items]."""
        logits = self.logits(user_buckets, affinity)
        return torch.sigmoid(self.calibration_scale * logits + self.calibration_shift)


class UpliftModel(nn.Module):
    """Outcomes of a customer under every treatment: one shared trunk, a head per treatment.

    Head ``t`` predicts three numbers for treatment ``t``:
      P(visit), P(conversion | visit), E[spend | conversion] (log link, so positive);
    composed into P(visit), P(conversion) = P(visit) * P(conversion | visit) and
    E[spend] = P(conversion) * E[spend | conversion]. The factorisation follows the data
    (every conversion is a visit, every spend a conversion) and lets each factor learn
    from the rows where it is observed. Uplift of ``t`` = prediction under ``t`` minus
    under the control arm.
    """

    def __init__(
        self,
        *,
        n_categorical: int,
        n_buckets: int,
        n_numeric: int,
        n_treatments: int,
        embedding_dim: int = 4,
        hidden: int = 32,
        base_rates: tuple[float, float, float] = (0.15, 0.06, 100.0),
    ) -> None:
        super().__init__()
        self.n_categorical = int(n_categorical)
        self.n_buckets = int(n_buckets)
        self.n_treatments = int(n_treatments)
        self.embedding = nn.Embedding(n_categorical * n_buckets, embedding_dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.trunk = nn.Sequential(
            nn.Linear(n_categorical * embedding_dim + n_numeric, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, 3) for _ in range(n_treatments))
        visit, conversion_given_visit, spend_given_conversion = base_rates
        with torch.no_grad():
            for head in self.heads:
                head.weight.mul_(0.1)
                head.bias.copy_(
                    torch.tensor(
                        [
                            _logit(visit),
                            _logit(conversion_given_visit),
                            math.log(spend_given_conversion),
                        ]
                    )
                )
        self.register_buffer("categorical_offsets", torch.arange(n_categorical) * n_buckets)

    def raw(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """Head outputs float32[B, n_treatments, 3]: visit logit, conversion-given-visit
        logit, log E[spend | conversion].

        categorical: int64[B, n_categorical]; numeric: float32[B, n_numeric].
        """
        embedded = self.embedding(categorical + self.categorical_offsets).flatten(1)
        shared = self.trunk(torch.cat([embedded, numeric], dim=1))
        return torch.stack([head(shared) for head in self.heads], dim=1)

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """float32[B, 3, n_treatments]: P(visit), P(conversion), E[spend] per treatment
        (outcomes in ``HILLSTROM_OUTCOMES`` order)."""
        return compose_outcomes(self.raw(categorical, numeric))


def compose_outcomes(raw: torch.Tensor) -> torch.Tensor:
    """raw: float32[B, T, 3] head outputs -> float32[B, 3, T] (visit, conversion, spend)."""
    visit = torch.sigmoid(raw[..., 0])
    conversion = visit * torch.sigmoid(raw[..., 1])
    spend = conversion * torch.exp(raw[..., 2])
    return torch.stack([visit, conversion, spend], dim=1)

"""Checkpoints: ``<name>.safetensors`` (weights) + ``<name>.json`` (``CheckpointMetadata``).

Weights are never unpickled (safetensors holds raw tensors only). The metadata records
the weights' SHA-256, so a truncated or swapped weights file is refused before use, and
the feature spec, so a caller expecting another spec gets ``FeatureSpecMismatch``.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from nudgeserve.models.errors import CheckpointError, FeatureSpecMismatch
from nudgeserve.models.learn.datasets import file_sha256
from nudgeserve.models.learn.features import HillstromFeaturizer, ObdFeaturizer
from nudgeserve.models.learn.nets import ObdClickModel, UpliftModel
from nudgeserve.models.specs import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointMetadata,
    FeatureSpec,
    HillstromArchitecture,
    HillstromFeatureSpec,
    ObdArchitecture,
    ObdFeatureSpec,
    spec_differences,
)

DEFAULT_CHECKPOINTS = ("obd", "hillstrom")

_Metadata = TypeVar("_Metadata", bound=msgspec.Struct)


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths of a checkpoint named by either file or their stem."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def build_module(metadata: CheckpointMetadata) -> nn.Module:
    """An untrained module shaped as ``metadata`` says (weights are loaded into it)."""
    spec, arch = metadata.feature_spec, metadata.architecture
    if metadata.kind == "obd_click":
        if not isinstance(spec, ObdFeatureSpec) or not isinstance(arch, ObdArchitecture):
            raise CheckpointError("obd_click checkpoint needs an obd spec and architecture")
        return ObdClickModel(
            item_categorical_buckets=torch.zeros(
                spec.n_items, len(spec.item_categorical_names), dtype=torch.long
            ),
            item_numeric=torch.zeros(spec.n_items, len(spec.item_numeric_names)),
            n_positions=spec.n_positions,
            n_user_fields=len(spec.user_feature_names),
            n_buckets=spec.n_buckets,
            dim=arch.dim,
            hidden=arch.hidden,
        )
    if not isinstance(spec, HillstromFeatureSpec) or not isinstance(arch, HillstromArchitecture):
        raise CheckpointError("hillstrom_uplift checkpoint needs a hillstrom spec and architecture")
    return UpliftModel(
        n_categorical=len(spec.categorical_names),
        n_buckets=spec.n_buckets,
        n_numeric=len(spec.numeric_names),
        n_treatments=len(spec.treatments),
        embedding_dim=arch.embedding_dim,
        hidden=arch.hidden,
    )


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint in memory: ``module`` (eval mode, CPU, float32) and its ``metadata``."""

    module: nn.Module
    metadata: CheckpointMetadata
    path: Path

    @property
    def kind(self) -> str:
        return self.metadata.kind

    @property
    def spec(self) -> FeatureSpec:
        return self.metadata.feature_spec

    def featurizer(self) -> ObdFeaturizer | HillstromFeaturizer:
        """The featurizer this model was trained with."""
        if isinstance(self.spec, ObdFeatureSpec):
            return ObdFeaturizer(self.spec)
        return HillstromFeaturizer(self.spec)


def save_checkpoint(module: nn.Module, metadata: CheckpointMetadata, path: str | Path) -> Path:
    """Write ``module``'s weights and ``metadata`` (its ``weights_sha256`` is filled in).

    path: the checkpoint's stem or either file name; parent folders are created.
    Returns the weights path.
    """
    state = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in module.state_dict().items()
    }
    return write_weights_and_metadata(path, state, metadata, kind=metadata.kind)


def write_weights_and_metadata(
    path: str | Path,
    state: dict[str, torch.Tensor],
    metadata: msgspec.Struct,
    *,
    kind: str,
    **fields: object,
) -> Path:
    """Write ``state`` as ``<path>.safetensors`` and ``metadata`` as ``<path>.json``.

    state: CPU, contiguous tensors by name. The metadata written has ``weights_sha256``
    set to the written file's digest, plus any ``fields`` replaced. Parent folders are
    created; returns the weights path.
    """
    weights_path, metadata_path = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # Written through bytes (not save_file) so the file gets the usual umask permissions.
    weights_path.write_bytes(save(state, metadata={"kind": kind}))
    metadata = msgspec.structs.replace(metadata, **fields, weights_sha256=file_sha256(weights_path))
    metadata_path.write_bytes(msgspec.json.format(msgspec.json.encode(metadata), indent=2) + b"\n")
    return weights_path


def read_versioned_metadata(
    metadata_path: Path, metadata_type: type[_Metadata], format_version: int, what: str
) -> _Metadata:
    """Decode ``metadata_path`` as ``metadata_type`` once its ``format_version`` matches.

    The version is read first so a file from another release gets a message naming the
    version rather than a field-by-field validation error. ``what`` ("checkpoint",
    "ensemble") names the file in every CheckpointError raised.
    """
    try:
        raw = metadata_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} metadata {metadata_path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} metadata {metadata_path}: {exc}") from None
    try:
        version = msgspec.json.decode(raw, type=dict).get("format_version")
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"{what} metadata {metadata_path} is not JSON: {exc}") from None
    if version != format_version:
        raise CheckpointError(
            f"{what} {metadata_path} has format_version {version!r}; this nudgeserve reads "
            f"{format_version}"
        )
    try:
        return msgspec.json.decode(raw, type=metadata_type)
    except (msgspec.ValidationError, ValueError) as exc:
        raise CheckpointError(f"{what} metadata {metadata_path} is invalid: {exc}") from None


def load_verified_weights(
    weights_path: Path, expected_sha256: str, what: str
) -> dict[str, torch.Tensor]:
    """The tensors of ``weights_path`` on CPU, after its SHA-256 matched the metadata's.

    The digest is checked before safetensors parses the file, so a truncated or swapped
    file is refused with a message saying so, not with a parser error.
    """
    if not weights_path.is_file():
        raise CheckpointError(f"{what} weights {weights_path} do not exist")
    digest = file_sha256(weights_path)
    if digest != expected_sha256:
        raise CheckpointError(
            f"{what} weights {weights_path} are corrupt or belong to another {what} "
            f"(sha256 {digest[:12]}..., metadata says {expected_sha256[:12]}...)"
        )
    try:
        return load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {what} weights {weights_path}: {exc}") from None


def read_metadata(path: str | Path) -> CheckpointMetadata:
    """The metadata of a checkpoint, validated; raises CheckpointError."""
    _, metadata_path = checkpoint_paths(path)
    return read_versioned_metadata(
        metadata_path, CheckpointMetadata, CHECKPOINT_FORMAT_VERSION, "checkpoint"
    )


def load_checkpoint(
    path: str | Path,
    expected_spec: FeatureSpec | None = None,
    *,
    expected_kind: str | None = None,
) -> LoadedModel:
    """Load a checkpoint written by ``save_checkpoint``.

    path: the checkpoint's stem or either file name.
    expected_spec: when given, the checkpoint's feature spec must equal it, else
        ``FeatureSpecMismatch`` lists every differing field.
    expected_kind: ``"obd_click"`` or ``"hillstrom_uplift"``, checked when given.
    Raises CheckpointError (a ValueError) when a file is missing, corrupt, or its
    weights do not match the metadata.
    """
    weights_path, _ = checkpoint_paths(path)
    metadata = read_metadata(path)
    if expected_kind is not None and metadata.kind != expected_kind:
        raise CheckpointError(
            f"checkpoint {weights_path} is a {metadata.kind!r} model, expected {expected_kind!r}"
        )
    if expected_spec is not None:
        differences = spec_differences(expected_spec, metadata.feature_spec)
        if differences:
            listed = "; ".join(
                f"{k}: expected {e!r}, found {f!r}" for k, (e, f) in differences.items()
            )
            raise FeatureSpecMismatch(
                f"checkpoint {weights_path} was trained with a different feature spec ({listed})",
                differences,
            )
    state = load_verified_weights(weights_path, metadata.weights_sha256, "checkpoint")
    module = build_module(metadata)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights {weights_path} do not fit its architecture: {exc}"
        ) from None
    module.eval()
    return LoadedModel(module=module, metadata=metadata, path=weights_path)


def default_checkpoint(name: str) -> Path:
    """Weights path of a shipped default checkpoint: ``"obd"`` or ``"hillstrom"``."""
    if name not in DEFAULT_CHECKPOINTS:
        raise ValueError(f"name must be one of {DEFAULT_CHECKPOINTS}, got {name!r}")
    root = importlib.resources.files("nudgeserve.models") / "checkpoints"
    return Path(str(root / f"{name}.safetensors"))

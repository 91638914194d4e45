"""Torch: datasets, featurizers, nets, checkpoints, inference, training, the uplift ensemble.

Import the modules themselves (``nudgeserve.models.learn.training``); the package's common
names are re-exported lazily by ``nudgeserve.models``. ``datasets`` and ``features`` do not
import torch; the others do.
"""

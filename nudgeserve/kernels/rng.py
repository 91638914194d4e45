"""The counter-based generator every random kernel uses (NumPy form), and its constants.

Each row of a batch has its own 64-bit ``seed``. Its key is the first SplitMix64 output
for that seed, ``key = splitmix64(seed) = mix64(seed + GAMMA)``, and its ``c``-th uniform
(``c = 0, 1, ...``) is ``mix64(key + (c + 1) * GAMMA)`` turned into a double. Every draw
is a pure function of ``(seed, c)``: no state is carried between draws, so a row's draws
never depend on which rows share its batch, on the order rows are processed in, or on the
backend. The Numba kernels (``_sampling_numba``, ``_bootstrap_numba``) repeat these few
integer operations exactly, with the constants defined here.

Doubles are ``((z >> 12) + 0.5) * 2**-52``: 52 random bits centred in their interval, so
every uniform lies strictly inside (0, 1) and ``log(u)`` is always finite. The arithmetic
is exact in float64, hence identical everywhere.

``mix64`` is SplitMix64's finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014), which passes BigCrush as a counter-based generator.
The module is public because code outside ``kernels`` draws from the same streams (the
linear bandit's Monte Carlo, the off-policy bootstrap's keys); it must never repeat the
constants.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GAMMA", "MIX1", "MIX2", "UNIT", "mix64", "row_keys", "splitmix64", "uniforms"]

# SplitMix64's increment (the golden ratio in 64 bits) and its finaliser's multipliers.
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
# Turns the top 52 bits of a word into a double in (0, 1).
UNIT = 2.0**-52

_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S12 = np.uint64(12)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of ``z: uint64[...]`` (wrapping arithmetic), same shape."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> _S30)) * MIX1
    z = (z ^ (z >> _S27)) * MIX2
    return z ^ (z >> _S31)


def splitmix64(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output for ``state: uint64[...]``: ``mix64(state + GAMMA)``, same shape.

    A good 64-bit hash of any 64-bit word (a bijection), used to turn seeds and row keys
    into well-mixed words.
    """
    return mix64(np.asarray(state, dtype=np.uint64) + GAMMA)


def row_keys(seeds: np.ndarray) -> np.ndarray:
    """``seeds: uint64[B]`` -> ``keys: uint64[B]``."""
    return splitmix64(np.atleast_1d(np.asarray(seeds, dtype=np.uint64)))


def uniforms(keys: np.ndarray, counters: np.ndarray | int) -> np.ndarray:
    """Uniform doubles in (0, 1) for ``keys`` and ``counters`` (uint64, broadcast).

    keys: uint64[...]; counters: uint64[...] or an int; returns float64 of the broadcast
    shape.
    """
    keys = np.atleast_1d(np.asarray(keys, dtype=np.uint64))
    counters = np.atleast_1d(np.asarray(counters, dtype=np.uint64))
    z = mix64(keys + (counters + np.uint64(1)) * GAMMA)
    return ((z >> _S12).astype(np.float64) + 0.5) * UNIT

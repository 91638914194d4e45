"""Batched featurize -> score -> select per use case, and the records it logs. No HTTP, no Ray."""

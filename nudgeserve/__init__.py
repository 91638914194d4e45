"""nudgeserve: a real-time decision server for e-commerce."""

__version__ = "0.1.0"

__all__ = ["__version__"]

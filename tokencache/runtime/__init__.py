"""Runtime: per-step execution and state (CacheRuntime), and the model -> runtime registry."""
from .runtime import CacheRuntime

__all__ = ["CacheRuntime"]

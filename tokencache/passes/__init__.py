"""Graph rewrites, one file each; every pass is a pure GraphModule -> GraphModule function."""
from .cleanup import cleanup
from .fresh import fresh
from .partial import partial, tokens_for
from .reuse import reuse

__all__ = ["cleanup", "fresh", "partial", "reuse", "tokens_for"]

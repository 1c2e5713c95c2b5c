"""Errors tokencache raises on purpose (exported as tokencache.TokenCacheError)."""
from __future__ import annotations


class TokenCacheError(RuntimeError):
    """tokencache cannot do what was asked: strict=True and the cache rewrite cannot apply to a
    graph (the message says why)."""

"""Policies by name: each is a schedule plus the passes that build its variants."""
from .base import FRESH, Policy, is_fresh_step
from .clusca import ClusCaPolicy
from .dato import DatoPolicy
from .duca import DucaPolicy
from .fora import ForaPolicy
from .none import NonePolicy
from .taylorseer import TaylorSeerPolicy
from .toca import TocaPolicy

POLICIES = {"none": NonePolicy(), "fora": ForaPolicy(), "toca": TocaPolicy(), "duca": DucaPolicy(),
            "taylorseer": TaylorSeerPolicy(), "clusca": ClusCaPolicy(), "dato": DatoPolicy()}


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown tokencache policy {name!r}; allowed: {', '.join(POLICIES)}")
    return POLICIES[name]


__all__ = ["FRESH", "POLICIES", "Policy", "get_policy", "is_fresh_step"]

"""Factories for `tokencache profile --model tests.profile_factories:NAME` tests."""
import torch

from tiny_models import NoBlocksModel, reference_case


def good():
    model = reference_case().build()
    return model, {"hidden_states": torch.randn(2, 4, 16, 16), "timestep": torch.zeros(2),
                   "class_labels": torch.tensor([1, 2])}


def raises():
    raise RuntimeError("weights not found")


def not_a_module():
    return "model", {}


def cannot_cache():
    return NoBlocksModel(), {"x": torch.randn(2, 16), "timestep": torch.zeros(2)}

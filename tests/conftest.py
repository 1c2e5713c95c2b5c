import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# lint and check the state wiring after every pass (tokencache/passes/checks.py)
os.environ.setdefault("TOKENCACHE_CHECK_PASSES", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles the same model classes again; Dynamo counts those against its
    per-function recompile limit (8), so start every test with a clean Dynamo cache."""
    torch._dynamo.reset()
    yield


@pytest.fixture(autouse=True)
def fresh_tokencache():
    """...and with none of tokencache's process-wide state (the model registry, the backend per
    configuration, step links, packed weights), so no test sees what an earlier one compiled."""
    from tokencache import introspect

    introspect.reset_state()
    yield

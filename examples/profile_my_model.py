"""Profile your own DiT with `tokencache profile --model package.module:factory`.

    PYTHONPATH=examples tokencache profile --model profile_my_model:make --policy toca,fora --quick --plot my.png

The factory takes no arguments and returns (model, forward kwargs). The profiler replaces the
"timestep" entry every step (1000 -> 0, as a tensor) and, when the output has the latent's shape,
takes an Euler step on "hidden_states" (or the first tensor argument).
"""
import torch

from tokencache.models.reference_dit import ReferenceDiT


def make():
    torch.manual_seed(0)
    model = ReferenceDiT(image=32, patch=2, channels=4, hidden=256, depth=8, heads=4)   # your model here
    inputs = {"hidden_states": torch.randn(2, 4, 32, 32), "timestep": torch.zeros(2),
              "class_labels": torch.tensor([3, 7])}
    return model, inputs


if __name__ == "__main__":
    import sys

    from tokencache.cli import main
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    sys.exit(main(["profile", "--model", "profile_my_model:make", "--policy", "toca,fora", "--quick"]))

"""A small CNN classifier of Fashion-MNIST, trained in-project: it judges generated samples (class
accuracy) and provides the feature space of the Fréchet distance FD_clf (a stand-in for FID, which
needs an Inception network that cannot be downloaded here).

    python -m tokencache.models.classifier --epochs 3      # trains and installs the weights

Inputs are images in [0, 1] of shape (n, 1, 28, 28) (see data.to_image_space).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fashion_dit import load_state

WEIGHTS = "classifier.pt"


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 3 * 3, 128)
        self.out = nn.Linear(128, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 128) penultimate features; images in [0, 1]."""
        x = images * 2 - 1
        for conv in (self.c1, self.c2, self.c3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images):
        return self.out(self.features(images))


def load_classifier() -> Classifier:
    model = Classifier()
    model.load_state_dict(load_state(WEIGHTS))
    return model.eval()


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    preds = torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])
    return (preds == labels).float().mean().item()


def train_classifier(epochs: int = 3, seed: int = 0, threads: int = 1) -> tuple[Classifier, float]:
    from .data import load_raw

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x, y = load_raw("train")
    xt, yt = load_raw("test")
    X = torch.from_numpy(x.copy()).float().div(255).unsqueeze(1)
    Y = torch.from_numpy(y.astype("int64"))
    XT = torch.from_numpy(xt.copy()).float().div(255).unsqueeze(1)
    YT = torch.from_numpy(yt.astype("int64"))
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(X)).split(128):
            xb = (X[idx] + 0.03 * torch.randn_like(X[idx])).clamp(0, 1)   # mild noise: generated images are not clean
            loss = F.cross_entropy(model(xb), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy(model.eval(), XT, YT)
        print(f"epoch {epoch}: test accuracy {acc:.4f} ({time.time() - start:.0f} s)", flush=True)
    return model.eval(), acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    model, acc = train_classifier(args.epochs, threads=args.threads)
    dest = Path(__file__).parent / "weights" / WEIGHTS
    torch.save(model.state_dict(), dest)
    print(f"test accuracy {acc:.4f}; wrote {dest}")


if __name__ == "__main__":
    main()

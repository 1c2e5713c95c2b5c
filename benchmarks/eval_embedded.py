"""Quality of a shipped model (the embedded DiT by default, or a sibling with --model): class accuracy
and FD_clf of N generated samples, next to the real-data floor (FD_clf of N real training images
against the test set).

    python benchmarks/eval_embedded.py --samples 1000 --steps 50
    python benchmarks/eval_embedded.py --model embedded-mmdit --samples 1000 --steps 50
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date

import numpy as np
import torch
from tqdm import tqdm

from tokencache.models.classifier import accuracy, load_classifier
from tokencache.models.data import load, to_image_space
from tokencache.models import EMBEDDED, load_embedded
from tokencache.models.sampling import DEFAULT_GUIDANCE, make_noise, sample
from tokencache.profiling.metrics import class_accuracy, classifier_features, frechet_distance


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--model", default="embedded", choices=list(EMBEDDED))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model, clf = load_embedded(args.model), load_classifier()
    noise = make_noise(args.samples, args.seed)
    labels = torch.arange(args.samples) % 10
    start = time.time()
    images = torch.cat([to_image_space(sample(model, noise[i:i + args.batch], labels[i:i + args.batch], args.steps, args.guidance))
                        for i in tqdm(range(0, args.samples, args.batch), desc="sampling")])
    seconds = time.time() - start
    test_x, test_y = load("test")
    test_images = to_image_space(test_x)
    real_test = classifier_features(clf, test_images)
    train_x, _ = load("train")
    pick = np.random.default_rng(0).choice(len(train_x), args.samples, replace=False)
    result = {
        "model": args.model, "samples": args.samples, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
        "class_accuracy": class_accuracy(clf, images, labels),
        "fd_clf_vs_test": frechet_distance(classifier_features(clf, images), real_test),
        "fd_clf_real_floor": frechet_distance(classifier_features(clf, to_image_space(train_x[pick])), real_test),
        "classifier_test_accuracy": accuracy(clf, test_images, test_y),
        "sampling_seconds": round(seconds, 1), "date": str(date.today()),
    }
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    name = "embedded_quality.json" if args.model == "embedded" else f"{args.model.replace('-', '_')}_quality.json"
    with open(os.path.join(os.path.dirname(__file__), "results", name), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

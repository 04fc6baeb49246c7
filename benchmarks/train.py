"""Training throughput: the local trainer against a bare loop on in-memory tensors.

The trainer streams JPEGs from a manifest through DataLoader workers, augments batches and
checkpoints each epoch; the bare loop trains the same model on the same images already held as
one tensor, which is the most any data pipeline could give. Both are measured in this run, on
this machine, and the ratio is printed (target: >= 0.85). Then the bare loop's images/s for
``num_layers`` 20 and 18 at 96x96.

    python benchmarks/train.py --images 256 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import attrs
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pcamflow.artifacts import Manifests
from pcamflow.data.synth import write_synthetic_pcam
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.model.resnet import build_model
from pcamflow.local.training.dataset import default_workers
from pcamflow.local.training.trainer import train_model


def make_data(root: Path, n: int) -> tuple[Manifests, np.ndarray, np.ndarray]:
    paths = write_synthetic_pcam(root / "h5", train=n, valid=32, test=0, progress=False)
    manifests, arrays = {}, {}
    for split in ("train", "valid"):
        with h5py.File(paths[f"{split}_x"]) as fx, h5py.File(paths[f"{split}_y"]) as fy:
            x, y = fx["x"][:], fy["y"][:].reshape(-1).astype(int)
        arrays[split] = (x, y)
        lines = []
        for i, (patch, label) in enumerate(zip(x, y, strict=True)):
            path = root / "images" / split / str(label) / f"{split}_{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(patch).save(path, quality=95)
            lines.append(json.dumps({"source-ref": path.resolve().as_uri(), "class": str(label)}))
        manifests[split] = str(root / f"{split}.manifest")
        Path(manifests[split]).write_text("\n".join(lines) + "\n")
    x, y = arrays["train"]
    return Manifests(manifests=manifests, counts={"train": n, "valid": 32}), x, y


def bare_loop(hp: Hyperparameters, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Images/s of the plainest loop: same model, optimizer and batch size, tensors in memory."""
    torch.manual_seed(0)
    model = build_model(hp.num_layers, hp.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=hp.learning_rate, momentum=hp.momentum,
                                weight_decay=hp.weight_decay)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
    labels = torch.from_numpy(y)
    batch = hp.mini_batch_size
    steps = len(images) // batch
    model.train()
    rates = []
    for _ in range(epochs):
        began = time.perf_counter()
        order = torch.randperm(len(images))
        for step in range(steps):
            pick = order[step * batch : (step + 1) * batch]
            loss = F.cross_entropy(model((images[pick] - 0.5) / 0.25), labels[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(steps * batch / (time.perf_counter() - began))
    return rates[-1]  # the last epoch: warmed up, as the trainer's figure


def trainer_rate(hp: Hyperparameters, manifests: Manifests, workers: int, epochs: int,
                 out: Path) -> float:
    outcome = train_model(manifests, attrs.evolve(hp, epochs=epochs),
                          LocalExtensions(num_workers=workers, device="cpu"), out,
                          progress=False)
    n = (manifests.counts["train"] // hp.mini_batch_size) * hp.mini_batch_size
    return n / outcome.history[-1]["train_time_s"]  # training only, as the bare loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training images")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (the last is timed)")
    parser.add_argument("--batch", type=int, default=32, help="mini_batch_size")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument("--layers", type=int, nargs="+", default=[20, 18],
                        help="num_layers to report images/s for at 96x96")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifests, x, y = make_data(root, args.images)
        for layers in args.layers:
            hp = Hyperparameters(num_layers=layers, mini_batch_size=args.batch,
                                 learning_rate=0.01, num_training_samples=args.images)
            workers = args.workers if args.workers is not None else default_workers()
            # bare loop before and after the trainer: load from elsewhere drifts over time
            before = bare_loop(hp, x, y, args.epochs)
            ours = trainer_rate(hp, manifests, workers, args.epochs, root / f"train{layers}")
            bare = (before + bare_loop(hp, x, y, args.epochs)) / 2
            print(f"resnet{layers} 96x96 batch {args.batch}: bare loop {bare:7.1f} img/s, "
                  f"trainer {ours:7.1f} img/s, ratio {ours / bare:.2f} (target >= 0.85)")


if __name__ == "__main__":
    main()

"""Evaluation throughput against a bare forward loop of the same model.

The evaluator reads JPEG files named by a manifest, decodes, normalises, runs the network and
takes the softmax; the baseline runs only the network, on the same images already decoded
and normalised in memory. Both use the same model, batch size and thread count; each is run
``--repeats`` times, interleaved, and the best run of each is compared. Target: >= 0.85x.

    python benchmarks/evaluate.py --images 512 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import torch
from PIL import Image

from pcamflow.artifacts import Manifests
from pcamflow.data.synth import write_synthetic_pcam
from pcamflow.local.evaluation.evaluate import evaluate_archive
from pcamflow.local.evaluation.predict import load_batch, predict_files
from pcamflow.local.model.archive import ModelMeta, load_model_archive, save_model_archive
from pcamflow.local.model.resnet import architecture_name, build_model


def make_data(folder: Path, count: int) -> tuple[list[Path], Manifests]:
    """``count`` synthetic PCam test patches as JPEG files, with test and valid manifests."""
    files = write_synthetic_pcam(folder / "h5", train=0, valid=count, test=count, seed=0,
                                 progress=False)
    manifests = {}
    paths: dict[str, list[Path]] = {}
    for split in ("valid", "test"):
        with h5py.File(files[f"{split}_x"]) as fx, h5py.File(files[f"{split}_y"]) as fy:
            x, y = fx["x"][:], fy["y"][:].reshape(-1)
        lines, paths[split] = [], []
        for i, (patch, label) in enumerate(zip(x, y, strict=True)):
            path = folder / split / str(int(label)) / f"{split}_{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(patch).save(path, quality=95)
            paths[split].append(path)
            lines.append(json.dumps({"source-ref": path.as_uri(), "class": str(int(label))}))
        manifests[split] = folder / f"{split}.manifest"
        manifests[split].write_text("\n".join(lines) + "\n")
    return paths["test"], Manifests(manifests={k: str(v) for k, v in manifests.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths, manifests = make_data(folder, args.images)
        module = build_model(args.num_layers, 2)
        meta = ModelMeta(architecture=architecture_name(args.num_layers),
                         num_layers=args.num_layers, num_classes=2)
        archive = save_model_archive(folder / "model.tar.gz", module, meta)
        model = load_model_archive(archive)
        # the baseline's input: the same images, decoded and normalised once, in memory
        batches = [model.preprocess(load_batch(paths[i : i + args.batch_size]))
                   for i in range(0, len(paths), args.batch_size)]

        def bare() -> float:
            began = time.perf_counter()
            with torch.inference_mode():
                for batch in batches:
                    model.module(batch)
            return len(paths) / (time.perf_counter() - began)

        def evaluation() -> float:
            began = time.perf_counter()
            predict_files(model, paths, batch_size=args.batch_size, progress=False)
            return len(paths) / (time.perf_counter() - began)

        bare()  # warm-up: first-call allocations and oneDNN kernel choice
        runs: dict[str, list[float]] = {"bare": [], "evaluate": []}
        for _ in range(args.repeats):
            runs["bare"].append(bare())
            runs["evaluate"].append(evaluation())
        best = {k: max(v) for k, v in runs.items()}

        began = time.perf_counter()
        evaluate_archive(archive, manifests, folder / "report", bootstrap=1000,
                         batch_size=args.batch_size, progress=False)
        whole = time.perf_counter() - began

    print(f"model: {meta.architecture}, {args.images} images 96x96, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    for name, values in runs.items():
        print(f"  {name:<9} {best[name]:8.1f} images/s  (runs: "
              f"{', '.join(f'{v:.1f}' for v in values)}; median {statistics.median(values):.1f})")
    print(f"  ratio     {best['evaluate'] / best['bare']:.3f}x of the bare forward loop "
          "(target >= 0.85x)")
    print(f"  whole stage (test + valid predictions, bootstrap 1000, plots, report): "
          f"{whole:.1f} s for {2 * args.images} images")


if __name__ == "__main__":
    main()

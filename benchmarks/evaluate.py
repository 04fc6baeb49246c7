"""Prediction throughput: the evaluator's prediction path against a bare forward loop.

The evaluator predicts a manifest's images from the decoded cache (built once, timed) and, for
comparison, straight from the JPEG files (decoded by a thread pool as it goes): centre crop,
normalisation, forward pass and softmax on the device, scores kept there until the end. The
bare loop runs only the network, in the same memory format, on the same images already
decoded, normalised and held on the device. Both use the same model, batch size and thread
count; they are run ``--repeats`` times, interleaved, and the best run of each is compared
against the target, 0.9 (beside the ratio of images per CPU-second of the process, medians,
which waiting for a CPU that others share does not change; decoding from the files counts in
it). The whole evaluation stage (test and valid predictions, bootstrap,
plots, report) is timed once. The evaluator predicts in float32.

    python benchmarks/evaluate.py --images 512 --layers 20
    python benchmarks/evaluate.py --device cuda --images 32768 --batch 256 --layers 18 50
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import torch
from PIL import Image

from pcamflow.artifacts import Manifests
from pcamflow.data.synth import write_synthetic_pcam
from pcamflow.local.evaluation.evaluate import evaluate_archive, read_split
from pcamflow.local.evaluation.predict import load_batch, predict_files
from pcamflow.local.model.archive import ModelMeta, load_model_archive, save_model_archive
from pcamflow.local.model.cache import open_cache
from pcamflow.local.model.resnet import architecture_name, build_model

TARGET = 0.9


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", "--batch-size", dest="batch", type=int, default=128)
    parser.add_argument("--layers", "--num-layers", dest="layers", type=int, nargs="+",
                        default=[20])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {name}; "
          f"{args.images} images 96x96, batch {args.batch}, float32, best of {args.repeats}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths, manifests = make_data(folder, args.images)
        test_paths, test_labels = read_split(manifests, "test")
        entries = list(zip(test_paths, test_labels.tolist(), strict=True))
        for layers in args.layers:
            module = build_model(layers, 2)
            meta = ModelMeta(architecture=architecture_name(layers), num_layers=layers,
                             num_classes=2)
            archive = save_model_archive(folder / f"model{layers}.tar.gz", module, meta)
            model = load_model_archive(archive, device=device)
            began = time.perf_counter()
            cache = open_cache(entries, folder / f"cache{layers}", "test", channels=3,
                               resize=meta.resize, progress=False)
            build = time.perf_counter() - began
            assert cache is not None
            # the bare loop's input: the same images, decoded and normalised, on the device
            fmt = torch.channels_last if cuda else torch.contiguous_format
            if cuda:
                model.module.to(memory_format=torch.channels_last)
            batches = [model.preprocess(load_batch(paths[i : i + args.batch])).to(device)
                       .contiguous(memory_format=fmt) for i in range(0, len(paths), args.batch)]

            def bare(batches: list[torch.Tensor] = batches, model=model) -> tuple[float, float]:
                _sync(device)
                began, cpu = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    for batch in batches:
                        model.module(batch)
                _sync(device)
                return (len(paths) / (time.perf_counter() - began),
                        len(paths) / (time.process_time() - cpu))

            def evaluation(images=cache.images, model=model) -> tuple[float, float]:
                began, cpu = time.perf_counter(), time.process_time()
                predict_files(model, paths, batch_size=args.batch, progress=False,
                              images=images)
                return (len(paths) / (time.perf_counter() - began),
                        len(paths) / (time.process_time() - cpu))

            bare()  # warm-up: first-call allocations and kernel choice
            evaluation()
            timed: dict[str, list[tuple[float, float]]] = {"bare": [], "cached": [],
                                                            "from files": []}
            for _ in range(args.repeats):
                timed["bare"].append(bare())
                timed["cached"].append(evaluation())
                timed["from files"].append(evaluation(None))
            runs = {k: [wall for wall, _ in v] for k, v in timed.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in timed.items()}
            best = {k: max(v) for k, v in runs.items()}
            print(f"resnet{layers}:")
            for key, values in runs.items():
                print(f"  {key:<10} {best[key]:9.1f} images/s  (runs: "
                      f"{', '.join(f'{v:.1f}' for v in values)}; median "
                      f"{statistics.median(values):.1f}; {cpu[key]:.1f} per CPU-second)")
            for key in ("cached", "from files"):
                ratio = best[key] / best["bare"]
                verdict = "MEETS" if ratio >= TARGET else "MISSED"
                print(f"  ratio, {key}: {ratio:.3f}x of the bare forward loop "
                      f"({verdict} the {TARGET} target); per CPU-second "
                      f"{cpu[key] / cpu['bare']:.3f}x")
            print(f"  cache build (test split, decode + write): {build:.2f} s")
            began = time.perf_counter()
            evaluate_archive(archive, manifests, folder / f"report{layers}", bootstrap=1000,
                             batch_size=args.batch, progress=False, device=args.device,
                             data_path="cache", cache_dir=folder / f"cache{layers}")
            print(f"  whole stage (test + valid predictions, bootstrap 1000, plots, report): "
                  f"{time.perf_counter() - began:.1f} s for {2 * args.images} images")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()

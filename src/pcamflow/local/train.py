"""Train a run's model from the command line, in one process or in many under ``torchrun``.

::

    python -m pcamflow.local.train settings.toml
    torchrun --standalone --nproc-per-node 4 -m pcamflow.local.train settings.toml
    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --rdzv-backend c10d \\
        --rdzv-endpoint head:29400 -m pcamflow.local.train settings.toml

It trains what the pipeline's trainer stage trains: the ``[train]`` hyperparameters (with the
run's tuning result applied, if its tuner stage finished) on the manifests the run's manifests
stage made (``--manifests FILE`` names a manifests JSON instead), into ``<run_dir>/train``
(``--out``). Each process trains on its share of every batch; rank 0 prints the metric lines
and writes the checkpoints and ``model.tar.gz``. A ``pcamflow run`` afterwards finds the
training finished and goes on from there. Across machines, the images, the run folder and the
cache folder must be reachable at the same paths on each (a shared file system).

``--spec FILE`` is how :func:`pcamflow.local.training.trainer.train_distributed` passes its
arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pcamflow._io import recorded_artifacts
from pcamflow.artifacts import Manifests, TuningResult
from pcamflow.errors import ConfigError, PcamflowError, exit_code

__all__ = ["main"]


def _arguments(args: argparse.Namespace):  # -> (manifests, hp, ext, out_dir, seed)
    from pcamflow.local.training.trainer import read_spec, tuned

    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"{args.spec}: cannot read the training spec ({error})") from None
        return read_spec(spec)
    if not args.settings:
        raise ConfigError("name a settings file (or --spec FILE)")
    from pcamflow.config import Settings

    settings = Settings.from_toml(args.settings)
    run_dir = settings.run_dir
    if args.manifests:
        try:
            manifests = Manifests.from_json(Path(args.manifests).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"--manifests {args.manifests}: {error.strerror}") from None
    else:
        made = recorded_artifacts(run_dir, Manifests)
        if not made:
            raise ConfigError(
                f"{run_dir}: no finished manifests stage; make the manifests first "
                f"(`pcamflow run {args.settings} --only convert`, then `--only manifests`) "
                "or pass --manifests FILE"
            )
        manifests = made[-1][1]
    tunings = recorded_artifacts(run_dir, TuningResult)
    hp = tuned(settings.train.hyperparameters, tunings[-1][1] if tunings else None)
    out_dir = Path(args.out) if args.out else run_dir / "train"
    return manifests, hp, settings.train.extensions, out_dir, settings.pipeline.seed


def main(argv: Sequence[str] | None = None) -> int:
    """Train; returns the exit status (0, or 1/2 with the error on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m pcamflow.local.train",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="?", help="the run's settings file (.toml)")
    parser.add_argument("--manifests", help="a manifests JSON (default: the run's own)")
    parser.add_argument("--out", help="the output folder (default: <run_dir>/train)")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        from pcamflow.local.training.trainer import train_model

        manifests, hp, ext, out_dir, seed = _arguments(args)
        outcome = train_model(manifests, hp, ext, out_dir, seed=seed,
                              progress=not args.no_progress)
    except PcamflowError as error:
        print(f"pcamflow.local.train: error: {error}", file=sys.stderr)
        return exit_code(error)
    from pcamflow.local.training.distributed import Distribution

    if Distribution.from_environ().is_main:
        print(f"model: {outcome.archive}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

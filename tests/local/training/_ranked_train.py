"""One process of a distributed training run that writes down what it trains on.

``torchrun`` runs this script in every process. It wraps the decoded cache's batch reader to
append, for each pass over the train split, this rank's image indices (``rank-N.jsonl`` in
``--record``), and with ``--stall RANK:PASS`` makes that rank stop after its first batch of that
pass: it writes its process id to ``stalled`` and sleeps until it is killed. Then it trains
through the real entry point, ``pcamflow.local.train.main``, with the remaining arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pcamflow.local.train import main
from pcamflow.local.training import batches

parser = argparse.ArgumentParser()
parser.add_argument("--record", required=True)
parser.add_argument("--stall", default="")
args, rest = parser.parse_known_args()
record = Path(args.record)
rank = int(os.environ["RANK"])
read = batches.CachedBatches.batches
passes = [0]


def recorded(self: batches.CachedBatches, shards: list) -> object:
    if not self.cache.path.name.startswith("train-"):
        yield from read(self, shards)
        return
    number = passes[0]
    passes[0] += 1
    with open(record / f"rank-{rank}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pass": number, "shards": [s.tolist() for s in shards]}) + "\n")
    for step, batch in enumerate(read(self, shards)):
        yield batch
        if args.stall == f"{rank}:{number}" and step == 0:
            (record / "stalled").write_text(str(os.getpid()))
            time.sleep(600)  # killed here, in the middle of the epoch


batches.CachedBatches.batches = recorded
sys.exit(main(rest))

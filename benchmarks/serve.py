"""The local endpoint under load: latency, throughput and memory, against the model's own speed.

One run measures, on this machine:

1. the raw in-process forward pass of one preprocessed image (the floor any server adds to);
2. p50/p99 latency and requests/s at concurrency 1, over real HTTP (``POST /invocations``,
   one JPEG patch per request, persistent connections);
3. the same at concurrency 16, as one run of at least 10,000 requests, counting errors and
   sampling the server's resident memory every 1,000 requests.

It prints the figures and the ratios the endpoint aims for: p50 at concurrency 1 within
2x the raw forward + 2 ms, and throughput at 16 at least 3x that at 1 (micro-batching)::

    python benchmarks/serve.py                 # ResNet-20, 10,000 requests at concurrency 16
    python benchmarks/serve.py --requests 20000 --layers 56

The model is untrained (speed does not depend on the weights); the default ResNet-20 keeps the
forward pass short so that the figures show what the serving adds.
"""

from __future__ import annotations

import argparse
import http.client
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def make_archive(folder: Path, num_layers: int) -> Path:
    import torch

    from pcamflow.local.model.archive import ModelMeta, save_model_archive
    from pcamflow.local.model.resnet import architecture_name, build_model

    torch.manual_seed(0)
    meta = ModelMeta(
        architecture=architecture_name(num_layers), num_layers=num_layers, num_classes=2
    )
    return save_model_archive(folder / "model.tar.gz", build_model(num_layers, 2), meta)


def test_jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:96] / 96
    image = np.stack([200 + 40 * np.sin(7 * x), 120 + 40 * np.cos(5 * y), 180 + 20 * x * y], -1)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def raw_forward_ms(archive: Path, jpeg: bytes, repeats: int) -> tuple[float, float]:
    """Median ms of the forward pass of one preprocessed image, and of decode + preprocess."""
    from PIL import Image

    from pcamflow.local.model.archive import load_model_archive

    model = load_model_archive(archive)
    array = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[None]
    batch = model.preprocess(array)
    for _ in range(20):
        model.predict_proba(batch)
    forward = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_proba(batch)
        forward.append((time.perf_counter() - start) * 1000)
    prepare = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.preprocess(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[None])
        prepare.append((time.perf_counter() - start) * 1000)
    return statistics.median(forward), statistics.median(prepare)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Load:
    """``total`` requests from ``concurrency`` threads, each on its own kept-alive connection."""

    def __init__(self, url: str, body: bytes, total: int, concurrency: int) -> None:
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.body = body
        self.total = total
        self.concurrency = concurrency
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.done = 0
        self._lock = threading.Lock()
        self._next = 0
        self.on_progress = None  # called with the count of requests done, every 1000

    def _take(self) -> bool:
        with self._lock:
            if self._next >= self.total:
                return False
            self._next += 1
            return True

    def _worker(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
        mine = []
        while self._take():
            start = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=self.body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                ok = reply.status == 200 and data.startswith(b"[")
            except (OSError, http.client.HTTPException) as error:
                ok, data = False, str(error).encode()
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            mine.append((time.perf_counter() - start) * 1000)
            with self._lock:
                self.done += 1
                if not ok:
                    self.errors.append(data[:200].decode(errors="replace"))
                if self.on_progress is not None and self.done % 1000 == 0:
                    self.on_progress(self.done)
        conn.close()
        with self._lock:
            self.latencies.extend(mine)

    def run(self) -> float:
        """Run the load; returns the wall time in seconds."""
        threads = [threading.Thread(target=self._worker) for _ in range(self.concurrency)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start


def start_server(
    archive: Path, folder: Path, max_batch_size: int, max_wait_ms: float, threads: int | None
):
    url_file = folder / "server.url"
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [
            sys.executable, "-m", "pcamflow.cli", "-q", "serve", str(archive), "--port", "0",
            "--url-file", str(url_file), "--max-batch-size", str(max_batch_size),
            "--max-wait-ms", str(max_wait_ms),
            *(["--threads", str(threads)] if threads else []),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: see {folder / 'server.log'}")
        if url_file.exists():
            url = url_file.read_text().strip()
            try:
                conn = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return process, url
            except OSError:
                pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not answer /ping within 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=20, help="ResNet depth (default 20)")
    parser.add_argument("--requests", type=int, default=10_000, help="requests at concurrency 16")
    parser.add_argument("--sequential", type=int, default=1_000, help="requests at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    jpeg = test_jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        archive = make_archive(folder, args.layers)
        forward, prepare = raw_forward_ms(archive, jpeg, repeats=300)
        print(f"model: resnet{args.layers}, untrained; input 3x96x96; JPEG of {len(jpeg)} bytes")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"raw forward, one image, in process:  {forward:7.2f} ms (median)")
        print(f"decode + preprocess, one image:      {prepare:7.2f} ms (median)")

        process, url = start_server(
            archive, folder, args.max_batch_size, args.max_wait_ms, args.threads
        )
        try:
            Load(url, jpeg, 200, args.concurrency).run()  # warm-up: code paths, allocator
            one = Load(url, jpeg, args.sequential, 1)
            wall_one = one.run()
            rate_one = len(one.latencies) / wall_one
            p50_one = percentile(one.latencies, 50)
            print(f"\nconcurrency 1:  {len(one.latencies)} requests, {len(one.errors)} errors")
            print(f"  p50 {p50_one:7.2f} ms   p99 {percentile(one.latencies, 99):7.2f} ms   "
                  f"{rate_one:7.1f} req/s")

            many = Load(url, jpeg, args.requests, args.concurrency)
            memory = [rss_mb(process.pid)]
            many.on_progress = lambda done: memory.append(rss_mb(process.pid))
            wall_many = many.run()
            memory.append(rss_mb(process.pid))
            rate_many = len(many.latencies) / wall_many
            print(f"concurrency {args.concurrency}: {len(many.latencies)} requests, "
                  f"{len(many.errors)} errors, {wall_many:.1f} s")
            print(f"  p50 {percentile(many.latencies, 50):7.2f} ms   "
                  f"p99 {percentile(many.latencies, 99):7.2f} ms   {rate_many:7.1f} req/s")
            conn = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port)
            conn.request("GET", "/info")
            import json

            batches = json.loads(conn.getresponse().read())["batches"]
            print(f"  forward passes {batches['count']}, mean batch {batches['mean']}, "
                  f"largest {batches['largest']}")
            print("  server memory (RSS, MB) every 1,000 requests: "
                  + " ".join(f"{m:.0f}" for m in memory))
            growth = memory[-1] - memory[1] if len(memory) > 2 else float("nan")
            print(f"  growth after the first 1,000: {growth:+.1f} MB")
            if many.errors:
                print(f"  first error: {many.errors[0]}")
        finally:
            process.terminate()
            process.wait(30)

    limit = 2 * forward + 2
    print("\ntargets")
    print(f"  p50 at 1 <= 2 x raw forward + 2 ms: {p50_one:.2f} <= {limit:.2f} ms  "
          f"({p50_one / forward:.2f}x raw forward)  {'met' if p50_one <= limit else 'MISSED'}")
    ratio = rate_many / rate_one
    print(f"  throughput at {args.concurrency} >= 3 x at 1: {ratio:.2f}x  "
          f"{'met' if ratio >= 3 else 'MISSED'}")
    print(f"  >= 10,000 requests, 0 errors: {len(many.latencies)} requests, "
          f"{len(many.errors)} errors  "
          f"{'met' if len(many.latencies) >= 10_000 and not many.errors else 'MISSED'}")
    return 0 if not many.errors and not one.errors else 1


if __name__ == "__main__":
    sys.exit(main())

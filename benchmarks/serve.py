"""The local endpoint under load and under attack: latency, throughput and memory.

One run measures, on this machine, with the server's default settings (``[deploy]``):

1. the raw in-process forward pass of one preprocessed image (the floor any server adds to);
2. p50/p99 latency at concurrency 1, over real HTTP (``POST /invocations``, one JPEG patch per
   request, persistent connections);
3. the clean run: ``--requests`` requests from 16 clients, with their p50/p99, requests/s,
   errors and the server's peak memory (its ``VmHWM``); then a quarter as many on a server with
   micro-batching off, the throughput baseline;
4. the hostile mix: the same 16 clients and requests on a fresh server while attackers run:
   clients sending the largest ``.npy`` batches allowed, decompression bombs (one over the pixel
   limit, one at it, and a 6 MB body of noise at it), clients trickling 6 MB bodies, and a
   flood of connections that never finish their request head;
5. the worst case for memory: 16 clients at once, each sending the worst request (a 6 MB
   body that decodes to the most pixels allowed), on a fresh server.

It prints the figures and, for each target, MEETS or MISSED: p50 at concurrency 1 within
2x the raw forward + 2 ms; the 16 clients' throughput kept, that is at least that of the same
load on a server with micro-batching off (``--max-batch-size 1``, measured in the same run);
the normal clients' p99 under the hostile mix within 3x of the clean run's; the server's peak
memory under the bound (``--memory-bound-mb``) in every run; no errors for normal clients::

    python benchmarks/serve.py                      # ResNet-20, 10,000 requests per run
    python benchmarks/serve.py --requests 3000 --layers 56

The model is untrained (speed does not depend on the weights); the default ResNet-20 keeps the
forward pass short so that the figures show what the serving adds.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

MEETS = {True: "MEETS", False: "MISSED"}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


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


# --- hostile bodies ------------------------------------------------------------------------------


def _png(width: int, height: int, mode: int, rows: bytes | None, pad: int = 0) -> bytes:
    """A PNG (colour type ``mode``), its pixel rows given whole or all zero; ``pad`` bytes of an
    ancillary chunk that decoders skip make the body as large as wanted."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data)
        )

    channels = {0: 1, 2: 3}[mode]
    packer = zlib.compressobj(9)
    if rows is None:
        line = b"\x00" * (width * channels + 1)
        idat = b"".join(packer.compress(line) for _ in range(height)) + packer.flush()
    else:
        idat = packer.compress(rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    padding = chunk(b"pcPd", bytes(pad)) if pad else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + padding
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def hostile_bodies(max_pixels: int, max_images: int, max_body: int) -> dict[str, bytes]:
    side = int(max_pixels**0.5)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (side, side * 3), dtype=np.uint8)
    rows = b"".join(b"\x00" + noise[y].tobytes() for y in range(side))
    worst = _png(side, side, 2, rows)
    worst = _png(side, side, 2, rows, pad=max(0, max_body - len(worst) - 12 - 64))
    buffer = io.BytesIO()
    np.save(buffer, rng.integers(0, 256, (max_images, 96, 96, 3), dtype=np.uint8))
    return {
        "bomb over the limit": _png(4096, 4096, 0, None),  # the report's 58 KB bomb
        "bomb at the limit": _png(side, side, 0, None),
        "worst request": worst,  # the largest body, decoding to the most pixels
        "largest npy": buffer.getvalue(),
    }


# --- load ----------------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Load:
    """``total`` requests from ``concurrency`` threads, each on its own kept-alive connection.

    Like boto3's standard retry mode, a request refused with 503 or whose connection was
    closed is sent once more (on a new connection); it is an error if that fails too. The
    latency counts both tries.
    """

    def __init__(self, url: str, body: bytes, total: int, concurrency: int,
                 content_type: str = "image/jpeg") -> None:
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.body, self.content_type = body, content_type
        self.total, self.concurrency = total, concurrency
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.retried = 0
        self._lock = threading.Lock()
        self._next = 0

    def _take(self) -> bool:
        with self._lock:
            if self._next >= self.total:
                return False
            self._next += 1
            return True

    def _worker(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        headers = {"Content-Type": self.content_type, "Accept": "application/json"}
        mine = []
        while self._take():
            start = time.perf_counter()
            for attempt in range(2):
                try:
                    conn.request("POST", "/invocations", body=self.body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                    ok, again = reply.status == 200 and data.startswith(b"["), reply.status == 503
                except (OSError, http.client.HTTPException) as error:
                    ok, again, data = False, True, str(error).encode()
                if not ok and again:
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if ok or not again or attempt:
                    break
                with self._lock:
                    self.retried += 1
            mine.append((time.perf_counter() - start) * 1000)
            if not ok:
                with self._lock:
                    self.errors.append(data[:200].decode(errors="replace"))
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


class Attack:
    """Attackers that run until :meth:`stop`, counting the answers they get."""

    def __init__(self, url: str, bodies: dict[str, bytes], *, npy_clients: int,
                 bomb_clients: int, slow_clients: int, flood: int) -> None:
        parsed = urlparse(url)
        self.address = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.bodies = bodies
        self.answers: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = (
            [threading.Thread(target=self._sender, args=(["largest npy"],))
             for _ in range(npy_clients)]
            + [threading.Thread(target=self._sender, args=(
                ["bomb over the limit", "bomb at the limit", "worst request"],))
               for _ in range(bomb_clients)]
            + [threading.Thread(target=self._slow_body) for _ in range(slow_clients)]
            + ([threading.Thread(target=self._flood, args=(flood,))] if flood else [])
        )

    def _count(self, what: str) -> None:
        with self._lock:
            self.answers[what] += 1

    def _sender(self, kinds: list[str]) -> None:
        conn = http.client.HTTPConnection(*self.address, timeout=120)
        turn = 0
        while not self._stop.is_set():
            kind = kinds[turn % len(kinds)]
            turn += 1
            kind_type = "application/x-npy" if "npy" in kind else "image/png"
            try:
                conn.request("POST", "/invocations", body=self.bodies[kind],
                             headers={"Content-Type": kind_type})
                reply = conn.getresponse()
                reply.read()
                self._count(f"{kind}: {reply.status}")
            except (OSError, http.client.HTTPException):
                self._count(f"{kind}: connection lost")
                conn.close()
                conn = http.client.HTTPConnection(*self.address, timeout=120)
        conn.close()

    def _slow_body(self) -> None:
        head = (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                b"Content-Length: 6000000\r\n\r\n")
        while not self._stop.is_set():
            with socket.create_connection(self.address, timeout=60) as sock:
                try:
                    sock.sendall(head)
                    while not self._stop.wait(0.25):
                        sock.sendall(bytes(100))
                        if select.select([sock], [], [], 0)[0]:
                            answer = sock.recv(200)
                            self._count(f"slow body: {answer[9:12].decode() or 'closed'}")
                            break
                except OSError:
                    self._count("slow body: connection lost")

    def _flood(self, count: int) -> None:
        """Keep ``count`` connections open that never finish their request head (those the
        server closes are opened again every second)."""
        partial = b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        open_: list[socket.socket] = []
        while not self._stop.is_set():
            closed = [s for s in open_ if select.select([s], [], [], 0)[0]]
            for sock in closed:
                open_.remove(sock)
                sock.close()
                self._count("flood: closed by the server")
            while len(open_) < count:
                try:
                    sock = socket.create_connection(self.address, timeout=10)
                    sock.sendall(partial)
                    open_.append(sock)
                except OSError:
                    self._count("flood: refused")
                    break
            self._stop.wait(1.0)
        for sock in open_:
            sock.close()

    def __enter__(self) -> Attack:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _attack_process(url: str, bodies: dict[str, bytes], options: dict, stop, results) -> None:
    with Attack(url, bodies, **options) as attack:
        stop.wait()
    results.put(dict(attack.answers))


class AttackProcess:
    """:class:`Attack` in a process of its own, so that the attackers' threads do not take the
    normal clients' share of this process's interpreter lock (which would count against the
    server in their latencies)."""

    def __init__(self, url: str, bodies: dict[str, bytes], **options: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=_attack_process, args=(url, bodies, options, self._stop, self._results)
        )
        self.answers: Counter[str] = Counter()

    def __enter__(self) -> AttackProcess:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.answers = Counter(self._results.get(timeout=300))
        self._process.join(60)


# --- the server ----------------------------------------------------------------------------------


def start_server(archive: Path, folder: Path, options: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    url_file = folder / "server.url"
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-m", "pcamflow.cli", "-q", "serve", str(archive), "--port", "0",
         "--url-file", str(url_file), *options],
        stdout=log, stderr=subprocess.STDOUT,
    )
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


def info(url: str) -> dict:
    conn = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port)
    conn.request("GET", "/info")
    return json.loads(conn.getresponse().read())


def phase_batches(before: dict, after: dict) -> str:
    """The forward passes of one phase: the server's counters after it, less those before."""
    count = after["count"] - before["count"]
    images = after["images"] - before["images"]
    mean = images / count if count else 0.0
    return (f"this phase: forward passes {count}, mean batch {mean:.1f} "
            f"(largest so far {after['largest']}), abandoned "
            f"{after['abandoned'] - before['abandoned']}, dropped "
            f"{after['dropped'] - before['dropped']} images")


def report(label: str, load: Load, wall: float) -> None:
    print(f"{label}: {len(load.latencies)} requests, {len(load.errors)} errors "
          f"({load.retried} sent again), {wall:.1f} s")
    print(f"  p50 {percentile(load.latencies, 50):7.2f} ms   "
          f"p99 {percentile(load.latencies, 99):7.2f} ms   "
          f"{len(load.latencies) / wall:7.1f} req/s")
    if load.errors:
        print(f"  first error: {load.errors[0]}")


def main(argv: list[str] | None = None) -> int:
    from pcamflow.config import DeploySettings

    defaults = DeploySettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=20, help="ResNet depth (default 20)")
    parser.add_argument("--requests", type=int, default=10_000,
                        help="requests at concurrency 16, in each of the two runs")
    parser.add_argument("--sequential", type=int, default=1_000, help="requests at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--memory-bound-mb", type=float, default=1024.0,
                        help="the peak server memory stated in docs/serving.md (default 1024)")
    parser.add_argument("--threads", type=int,
                        help="torch threads, here and in the server (default: the server's)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    options = ["--threads", str(args.threads)] if args.threads else []

    jpeg = test_jpeg()
    bodies = hostile_bodies(defaults.max_pixels, defaults.max_images, defaults.max_body_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        archive = make_archive(folder, args.layers)
        forward, prepare = raw_forward_ms(archive, jpeg, repeats=300)
        print(f"model: resnet{args.layers}, untrained; input 3x96x96; JPEG of {len(jpeg)} bytes")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; server: the "
              f"[deploy] defaults{' but --threads' if options else ''}")
        print(f"raw forward, one image, in process:  {forward:7.2f} ms (median)")
        print(f"decode + preprocess, one image:      {prepare:7.2f} ms (median)\n")

        process, url = start_server(archive, folder / "clean", options)
        try:
            Load(url, jpeg, 200, args.concurrency).run()  # warm-up: code paths, allocator
            one = Load(url, jpeg, args.sequential, 1)
            wall_one = one.run()
            report("concurrency 1", one, wall_one)
            before = info(url)["batches"]  # the warm-up's and the sequential run's passes
            clean = Load(url, jpeg, args.requests, args.concurrency)
            wall_clean = clean.run()
            report(f"clean, concurrency {args.concurrency}", clean, wall_clean)
            print("  " + phase_batches(before, info(url)["batches"]))
            rss_clean = peak_rss_mb(process.pid)
            print(f"  server peak memory {rss_clean:.0f} MB")
        finally:
            process.terminate()
            process.wait(30)

        # the same load with micro-batching off: what the 16 clients' throughput owes to it
        process, url = start_server(archive, folder / "unbatched",
                                    [*options, "--max-batch-size", "1"])
        try:
            Load(url, jpeg, 200, args.concurrency).run()
            unbatched = Load(url, jpeg, max(args.requests // 4, 500), args.concurrency)
            wall_unbatched = unbatched.run()
            report(f"\nmicro-batching off, concurrency {args.concurrency}", unbatched,
                   wall_unbatched)
        finally:
            process.terminate()
            process.wait(30)

        process, url = start_server(archive, folder / "hostile", options)
        try:
            Load(url, jpeg, 200, args.concurrency).run()
            before = info(url)["batches"]
            hostile = Load(url, jpeg, args.requests, args.concurrency)
            with AttackProcess(url, bodies, npy_clients=2, bomb_clients=2, slow_clients=4,
                               flood=300) as attack:
                wall_hostile = hostile.run()
            report(f"\nhostile mix, concurrency {args.concurrency}", hostile, wall_hostile)
            print("  attackers' answers: " + ", ".join(
                f"{kind} x{count}" for kind, count in sorted(attack.answers.items())))
            print("  " + phase_batches(before, info(url)["batches"]))
            rss_hostile = peak_rss_mb(process.pid)
            print(f"  server peak memory {rss_hostile:.0f} MB")
        finally:
            process.terminate()
            process.wait(30)

        process, url = start_server(archive, folder / "worst", options)
        try:
            worst = bodies["worst request"]
            load = Load(url, worst, 5 * args.concurrency, args.concurrency, "image/png")
            wall = load.run()
            print(f"\nworst case: {args.concurrency} clients at once, each sending a "
                  f"{len(worst) / 2**20:.1f} MB body of {defaults.max_pixels:,} pixels")
            report("  ", load, wall)
            rss_worst = peak_rss_mb(process.pid)
            print(f"  server peak memory {rss_worst:.0f} MB")
        finally:
            process.terminate()
            process.wait(30)

    rate_one = len(one.latencies) / wall_one
    rate_many = len(clean.latencies) / wall_clean
    rate_unbatched = len(unbatched.latencies) / wall_unbatched
    p50_one = percentile(one.latencies, 50)
    p99_clean, p99_hostile = percentile(clean.latencies, 99), percentile(hostile.latencies, 99)
    limit = 2 * forward + 2
    peak = max(rss_clean, rss_hostile, rss_worst)
    errors = sum(len(run.errors) for run in (one, clean, unbatched, hostile, load))
    checks = [
        (f"p50 at 1 <= 2 x raw forward + 2 ms: {p50_one:.2f} <= {limit:.2f} ms "
         f"({p50_one / forward:.2f}x raw forward)", p50_one <= limit),
        (f"{args.concurrency}-client throughput kept (a request that finds the model idle "
         f"starts at once, yet batches form under load): {rate_many:.1f} req/s >= "
         f"{rate_unbatched:.1f} with micro-batching off ({rate_many / rate_unbatched:.2f}x)",
         rate_many >= rate_unbatched),
        (f"hostile-mix p99 <= 3 x clean p99: {p99_hostile:.1f} <= {3 * p99_clean:.1f} ms "
         f"({p99_hostile / p99_clean:.2f}x)", p99_hostile <= 3 * p99_clean),
        (f"peak server memory < {args.memory_bound_mb:.0f} MB: clean {rss_clean:.0f}, "
         f"hostile {rss_hostile:.0f}, worst case {rss_worst:.0f} MB",
         peak < args.memory_bound_mb),
        (f"normal clients get no errors: {errors}", errors == 0),
    ]
    print("\ntargets")
    for text, met in checks:
        print(f"  {MEETS[met]:6}  {text}")
    print(f"  (throughput at {args.concurrency} is {rate_many / rate_one:.2f}x that at 1; where "
          "one client already keeps the model busy, as on a small CPU, batching cannot add 3x)")
    return 0 if all(met for _, met in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

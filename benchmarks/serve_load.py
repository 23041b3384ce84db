"""Print `asdtool serve` under load: requests/s and p50/p95 latency at 1, 8 and 32 concurrent clients.

Serves a bundle on a loopback port (uvicorn in a thread of this process, the bundle loaded once, as
`asdtool serve` does) and posts the same `--seconds` WAV clip from N client threads, each sending
`--requests` requests one after another. Prints requests/s, latency quantiles, the forward batches
the worker made and the process's peak resident memory. Prints numbers, asserts nothing.
Usage: python benchmarks/serve_load.py BUNDLE [--machine fan] [--seconds 10] [--clients 1 8 32] [--requests 8]
"""

from __future__ import annotations

import argparse
import io
import resource
import socket
import threading
import time

import numpy as np
import soundfile as sf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import httpx2 as httpx
    import torch
    import uvicorn

    from asdtool.deploy.load import load_bundle
    from asdtool.deploy.serve import make_app

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--machine", default=None, help="machine type of the clip (default: the bundle's first)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    bundle = load_bundle(a.bundle)
    machine = a.machine or next(iter(bundle.machines))
    section = bundle.machines[machine][0]
    buf = io.BytesIO()
    sf.write(buf, (0.05 * np.random.default_rng(0).standard_normal(int(16000 * a.seconds))).astype(np.float32), 16000,
             format="WAV", subtype="PCM_16")  # fmt: skip
    clip = buf.getvalue()
    app = make_app(bundle, batch_size=a.batch_size)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/score?machine={machine}&section={section}"
    print(f"{a.bundle}: {bundle.meta['kind']} of {len(bundle.members)}, {bundle.seconds:g} s windows; "
          f"{a.seconds:g} s clips of {machine}; {a.threads} torch threads, batch {a.batch_size}")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'x real time':>11} {'p50 ms':>8} {'p95 ms':>8} {'batches':>8}")
    with httpx.Client(timeout=600) as warm:
        warm.post(url, content=clip).raise_for_status()
    for clients in a.clients:
        latencies: list[float] = []
        lock = threading.Lock()
        before = app.state.batcher.batches

        def client() -> None:
            with httpx.Client(timeout=600) as c:
                for _ in range(a.requests):
                    t0 = time.perf_counter()
                    c.post(url, content=clip).raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - t0)

        workers = [threading.Thread(target=client) for _ in range(clients)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - start
        n = len(latencies)
        ms = np.percentile(np.array(latencies) * 1000, [50, 95])
        print(f"{clients:7d} {n:8d} {n / wall:7.2f} {n * a.seconds / wall:11.1f} {ms[0]:8.0f} {ms[1]:8.0f} "
              f"{app.state.batcher.batches - before:8d}")  # fmt: skip
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    server.should_exit = True
    thread.join(timeout=30)


if __name__ == "__main__":
    main()

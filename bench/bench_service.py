"""A bounded load test of `tbps serve` on loopback: N search requests, C at a time.

    python bench/bench_service.py [--requests 2000] [--concurrency 16] [--identities 250]

Builds a scratch_small model folder (random weights) and an index of the synthetic gallery,
starts `tbps serve` in its own process, then sends POST /search requests with distinct
captions (so the service's text cache does not answer them) from an asyncio client (httpx),
and a GET of the first result's image every tenth request. Prints requests/s, p50/p99
latency and the error count (any status other than 200, or a failed connection).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_index import scratch_small  # bench/ is on the path of a bench script
from tbps.data.synthetic import SynthConfig, generate_synthetic_dataset
from tbps.inference import build_index

COLOURS = ["red", "blue", "black", "white", "green", "yellow", "grey", "pink", "brown", "purple"]
TOPS = ["jacket", "shirt", "coat", "t-shirt", "sweater", "dress"]
BOTTOMS = ["trousers", "jeans", "shorts", "skirt", "pants"]
PEOPLE = ["a man", "a woman", "a young man", "an old woman", "a girl", "a boy"]


def captions():
    for who, c1, top, c2, bottom in itertools.product(PEOPLE, COLOURS, TOPS, COLOURS, BOTTOMS):
        yield f"{who} in a {c1} {top} and {c2} {bottom}"


async def load(port: int, total: int, concurrency: int) -> tuple[list[float], int, float]:
    queries = itertools.islice(captions(), total)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
    ) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int, query: str) -> None:
            nonlocal errors
            async with semaphore:
                start = time.perf_counter()
                try:
                    r = await client.post("/search", json={"query": query, "k": 10})
                    ok = r.status_code == 200
                    if ok and i % 10 == 0:
                        image = await client.get(r.json()["results"][0]["url"])
                        ok = image.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(1000 * (time.perf_counter() - start))
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(one(i, q) for i, q in enumerate(queries)))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--identities", type=int, default=250)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = None
    try:
        generate_synthetic_dataset(
            work / "synth", SynthConfig(num_identities=args.identities), progress=False
        )
        model = scratch_small()
        model.save_pretrained(work / "model")
        report = build_index(
            model,
            work / "synth" / "imgs",
            work / "index",
            model_source={"model": str(work / "model")},
            progress=False,
        )
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        server = subprocess.Popen(
            [sys.executable, "-m", "tbps", "serve", f"index={work / 'index'}", f"port={port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"tbps serve did not start: {server.stderr.read()}")
            time.sleep(0.3)
        latencies, errors, elapsed = asyncio.run(load(port, args.requests, args.concurrency))
        latencies.sort()
        print(
            f"{args.requests} POST /search (k=10, distinct captions; +1 image GET per 10) over "
            f"{report.images} images, {args.concurrency} concurrent, 2-core CPU, scratch_small"
        )
        print(
            f"{args.requests / elapsed:.1f} requests/s; latency p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {latencies[int(0.99 * (len(latencies) - 1))]:.1f} ms; errors {errors}"
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

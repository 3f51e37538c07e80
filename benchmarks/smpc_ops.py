"""SMPC ops on two in-process parties (bob, alice) and a crypto provider, fixed point (base 10,
3 fractional digits, as PySyft), next to plain torch and CrypTen's two-process figures.

For each op: median milliseconds per op (the op plus flushing its buffered commands; `.get()`
is not included), the bytes every frame carried (coordinator <-> parties, coordinator <->
provider, provider -> parties; requests and replies), communication rounds of the online phase
(openings), provider round trips, and plain torch's time on the same data. Each op runs twice:
"online" with its primitives dealt ahead of time (PrimitiveStore.provide, the preprocessing
phase) and "total" with them dealt on demand (one provider round trip per op). A fixed-point
mul/matmul is a Beaver product with the ABY3 rescaling fused in: 2 rounds online (open eps and
delta; open z - r), each one LocalStep message per party; both parties compute in this process,
so their CPU time adds up.

CrypTen 0.4.1 figures (measurements.md; 2 processes, gloo, 16-bit fixed point, TFP mode,
median; the brief quotes mul 2.5, matmul 3.1, gt 29, relu 30, max 221 ms).
In-process parties exchange encoded frames through function calls, so these times are CPU cost;
over RabbitMQ each round adds one broker round trip (~0.5 ms quiet, measurements.md): every
party is asked at once (fedmq.client.call_all).

With --amqp, a second table times the same ops (max 1000 only with --repeats <= 5) with the
parties and the provider as `fedmq worker` processes behind RabbitMQ (FEDMQ_AMQP_URL or --url).

Run: python benchmarks/smpc_ops.py [--repeats 15] [--amqp]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

import torch

import fedmq as sy
from fedmq.smpc.beaver import triple_params
from fedmq.smpc.comparison import comparison_primitives, max_primitives
from fedmq.smpc.provider import primitive_store
from fedmq.smpc.shares import _stats
from fedmq.smpc.truncation import truncation_params

CRYPTEN_MS = {"mul 100x100": 2.5, "matmul 100x100": 3.1, "gt 100x100": 29.0,
              "relu 100x100": 30.0, "max 1000": 221.0, "add 1000": 0.30}


class Meter:
    """Bytes of every frame the given in-process workers handle, and of their replies: what
    the coordinator sends the parties and the provider, and what the provider deals the
    parties (the hook's LocalTransport hands each frame to the worker's `handle_frame`)."""

    def __init__(self, workers):
        self.bytes = 0
        for w in workers:
            server = w.worker  # the Worker behind the VirtualWorker client
            original = server.handle_frame

            def handle_frame(frame, *args, _o=original):
                reply = _o(frame, *args)
                self.bytes += len(frame) + len(reply)
                return reply
            server.handle_frame = handle_frame


def make_cases(parties, cp):
    """(name, secure op, plain op, primitives it takes) for 2 parties and a provider."""
    bob, alice = parties
    torch.manual_seed(0)

    def shared(*shape):
        t = torch.randn(*shape)
        return t, t.fix_precision().share(bob, alice, crypto_provider=cp)

    v1000, s1000 = shared(1000)
    w1000, t1000 = shared(1000)
    m, sm = shared(100, 100)
    n, sn = shared(100, 100)

    def prims_mul(shape):
        return [("mul", triple_params("mul", shape, shape)),
                ("trunc", truncation_params(shape, 1000))]

    def prims_max(k):
        return max_primitives((), k, with_indices=False)

    return [
        ("add 1000", lambda: s1000 + t1000, lambda: v1000 + w1000, []),
        ("mul 1000", lambda: s1000 * t1000, lambda: v1000 * w1000, prims_mul((1000,))),
        ("mul 100x100", lambda: sm * sn, lambda: m * n, prims_mul((100, 100))),
        ("matmul 100x100", lambda: sm @ sn, lambda: m @ n,
         [("matmul", triple_params("matmul", (100, 100), (100, 100))),
          ("trunc", truncation_params((100, 100), 1000))]),
        ("gt 100x100", lambda: sm > sn, lambda: m > n, comparison_primitives((100, 100))),
        ("relu 100x100", lambda: sm.relu(), lambda: m.relu(),
         comparison_primitives((100, 100))[:-1] + [("bitmul", {"shape": [100, 100]})]),
        ("max 1000", lambda: s1000.max(), lambda: v1000.max(), prims_max(1000)),
    ]


def run_cases(cases, parties, cp, repeats: int, meter: "Meter | None") -> None:
    header = (f"{'op':<16}{'online ms':>10}{'total ms':>10}{'torch ms':>10}{'ratio':>9}"
              f"{'KB moved':>10}{'rounds':>7}{'deals':>6}{'CrypTen ms':>11}")
    print(header)
    store = primitive_store(cp)   # the provider's primitives, in its hook's context
    flush_all = cp.context.flush_all  # sends every client's buffered commands (that context)
    for name, secure, plain, prims in cases:
        secure(), flush_all()  # warm up (meta cache, allocator)
        online, total = [], []
        store.clear()
        for kind, params in prims:  # preprocessing: every instance the repeats need, batched
            store.provide(cp, parties, kind, params, repeats)
        for _ in range(repeats):
            t0 = time.perf_counter()
            secure()
            flush_all()
            online.append(time.perf_counter() - t0)
        for _ in range(repeats):
            store.clear()
            b0, r0, d0 = meter.bytes if meter else 0, _stats.rounds, store.requests
            t0 = time.perf_counter()
            secure()
            flush_all()
            total.append(time.perf_counter() - t0)
            moved = meter.bytes - b0 if meter else None
            rounds, deals = _stats.rounds - r0, store.requests - d0
        ptimes = []
        for _ in range(max(repeats, 50)):
            t0 = time.perf_counter()
            plain()
            ptimes.append(time.perf_counter() - t0)
        on, tot, pt = (statistics.median(x) * 1e3 for x in (online, total, ptimes))
        crypten = CRYPTEN_MS.get(name)
        kb = f"{moved / 1024:>10.1f}" if moved is not None else f"{'-':>10}"
        print(f"{name:<16}{on:>10.2f}{tot:>10.2f}{pt:>10.4f}{on / pt:>9.0f}x{kb}"
              f"{rounds:>7}{deals:>6}{crypten if crypten is not None else '-':>11}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--amqp", action="store_true",
                        help="also time the ops with the parties and the provider as `fedmq "
                             "worker` services over RabbitMQ (FEDMQ_AMQP_URL)")
    parser.add_argument("--url", default=os.environ.get("FEDMQ_AMQP_URL",
                                                        "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    cp = sy.VirtualWorker(hook, id="crypto_provider")
    parties = [bob, alice]
    meter = Meter([bob, alice, cp])
    print(f"2 parties + crypto provider, in-process, fixed point 10^3; median of "
          f"{args.repeats} (1 torch thread)")
    run_cases(make_cases(parties, cp), parties, cp, args.repeats, meter)
    print("online: primitives dealt ahead (preprocessing); total: dealt on demand. ratio = "
          "online / torch. KB moved and rounds are per op, dealing included. CrypTen: 2 "
          "processes over gloo, TFP mode (its TTP mode: mul 11.5, matmul 6.0, gt 99, relu 102, "
          "max 947 ms).")
    if args.amqp:
        run_amqp(hook, args.url, args.repeats)


def run_amqp(hook, url: str, repeats: int) -> None:
    """The same ops with bob, alice and the provider as worker processes behind RabbitMQ."""
    tag = uuid.uuid4().hex[:6]
    ids = [f"smpcbench-{name}-{tag}" for name in ("bob", "alice", "cp")]
    procs = [subprocess.Popen([sys.executable, "-m", "fedmq.cli", "worker", "--id", i, "--url",
                               url, "--log-level", "warning"]) for i in ids]
    try:
        bob, alice, cp = (sy.AMQPClientWorker(hook, id=i, url=url, timeout=120) for i in ids)
        for worker in (bob, alice, cp):
            worker.wait_until_served(120)  # the service is starting
        parties = [bob, alice]
        cases = [c for c in make_cases(parties, cp) if c[0] != "max 1000" or repeats <= 5]
        print(f"\nover RabbitMQ ({url.split('@')[-1]}): bob, alice and the provider are "
              f"`fedmq worker` processes; median of {repeats}; KB not metered")
        run_cases(cases, parties, cp, repeats, None)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        for i in ids:
            _delete_queue(url, f"fedmq.worker.{i}")


def _delete_queue(url: str, queue: str) -> None:
    """The services' queues are durable; leave none behind."""
    import asyncio

    from fedmq.transport.amqp import delete_queues
    asyncio.run(delete_queues(url, queue))


if __name__ == "__main__":
    main()

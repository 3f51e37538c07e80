"""SMPC ops on two in-process parties (bob, alice) and a crypto provider, fixed point (base 10,
3 fractional digits, as PySyft), next to plain torch and CrypTen's two-process figures.

For each op: median milliseconds per op (the op plus flushing its buffered commands; `.get()`
is not included), the bytes every frame carried (coordinator <-> parties, coordinator <->
provider, provider -> parties; requests and replies), communication rounds of the online phase
(openings), provider round trips, and plain torch's time on the same data. Each op runs twice:
"online" with its primitives dealt ahead of time (PrimitiveStore.provide, the preprocessing
phase) and "total" with them dealt on demand (one provider round trip per op).

CrypTen 0.4.1 figures (measurements.md; 2 processes, gloo, 16-bit fixed point, TFP mode,
median; the brief quotes mul 2.5, matmul 3.1, gt 29, relu 30, max 221 ms).
In-process parties exchange encoded frames through function calls, so these times are CPU cost;
over RabbitMQ each round adds a broker round trip (~0.5 ms, measurements.md) per party.

Run: python benchmarks/smpc_ops.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fedmq as sy
from fedmq.client import flush_all
from fedmq.smpc import STORE
from fedmq.smpc.additive import _stats
from fedmq.smpc.beaver import triple_params
from fedmq.smpc.comparison import comparison_primitives
from fedmq.smpc.truncation import truncation_params

CRYPTEN_MS = {"mul 100x100": 2.5, "matmul 100x100": 3.1, "gt 100x100": 29.0,
              "relu 100x100": 30.0, "max 1000": 221.0, "add 1000": 0.30}


class Meter:
    """Bytes of every frame in and out of the given workers' transports."""

    def __init__(self, workers):
        self.bytes = 0
        for w in workers:
            original = w.transport.request

            def request(worker_id, frame, timeout=None, message_type="message", _o=original):
                reply = _o(worker_id, frame, timeout=timeout, message_type=message_type)
                self.bytes += len(frame) + len(reply)
                return reply
            w.transport.request = request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    cp = sy.VirtualWorker(hook, id="crypto_provider")
    parties = [bob, alice]
    meter = Meter([bob, alice, cp])
    torch.manual_seed(0)

    def shared(*shape):
        t = torch.randn(*shape)
        return t, t.fix_precision().share(bob, alice, crypto_provider=cp)

    v1000, s1000 = shared(1000)
    w1000, t1000 = shared(1000)
    m, sm = shared(100, 100)
    n, sn = shared(100, 100)

    def prims_mul(shape):
        return [("mul", triple_params("mul", shape, shape)), ("trunc", truncation_params(shape, 1000))]

    def prims_cmp(shape):
        return comparison_primitives(shape)

    def prims_max(k):
        out, size = [], k
        while size > 1:
            half = size // 2
            out += comparison_primitives((half,)) + [("mul", triple_params("mul", (half,), (half,)))]
            size = half + size % 2
        return out

    cases = [
        ("add 1000", lambda: s1000 + t1000, lambda: v1000 + w1000, []),
        ("mul 1000", lambda: s1000 * t1000, lambda: v1000 * w1000, prims_mul((1000,))),
        ("mul 100x100", lambda: sm * sn, lambda: m * n, prims_mul((100, 100))),
        ("matmul 100x100", lambda: sm @ sn, lambda: m @ n,
         [("matmul", triple_params("matmul", (100, 100), (100, 100))),
          ("trunc", truncation_params((100, 100), 1000))]),
        ("gt 100x100", lambda: sm > sn, lambda: m > n, prims_cmp((100, 100))),
        ("relu 100x100", lambda: sm.relu(), lambda: m.relu(),
         prims_cmp((100, 100)) + [("mul", triple_params("mul", (100, 100), (100, 100)))]),
        ("max 1000", lambda: s1000.max(), lambda: v1000.max(), prims_max(1000)),
    ]
    print(f"2 parties + crypto provider, in-process, fixed point 10^3; median of "
          f"{args.repeats} (1 torch thread)")
    header = (f"{'op':<16}{'online ms':>10}{'total ms':>10}{'torch ms':>10}{'ratio':>9}"
              f"{'KB moved':>10}{'rounds':>7}{'deals':>6}{'CrypTen ms':>11}")
    print(header)
    for name, secure, plain, prims in cases:
        secure(), flush_all()  # warm up (meta cache, allocator)
        online, total = [], []
        STORE.clear()
        for kind, params in prims:  # preprocessing: every instance the repeats need, batched
            STORE.provide(cp, parties, kind, params, args.repeats)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            secure()
            flush_all()
            online.append(time.perf_counter() - t0)
        for _ in range(args.repeats):
            STORE.clear()
            b0, r0, d0 = meter.bytes, _stats.rounds, STORE.requests
            t0 = time.perf_counter()
            secure()
            flush_all()
            total.append(time.perf_counter() - t0)
            moved, rounds, deals = meter.bytes - b0, _stats.rounds - r0, STORE.requests - d0
        ptimes = []
        for _ in range(max(args.repeats, 50)):
            t0 = time.perf_counter()
            plain()
            ptimes.append(time.perf_counter() - t0)
        on, tot, pt = (statistics.median(x) * 1e3 for x in (online, total, ptimes))
        crypten = CRYPTEN_MS.get(name)
        print(f"{name:<16}{on:>10.2f}{tot:>10.2f}{pt:>10.4f}{on / pt:>9.0f}x{moved / 1024:>9.1f}"
              f"{rounds:>7}{deals:>6}{crypten if crypten is not None else '-':>11}")
    print("online: primitives dealt ahead (preprocessing); total: dealt on demand. ratio = "
          "online / torch. KB moved and rounds are per op, dealing included. CrypTen: 2 "
          "processes over gloo, TFP mode (its TTP mode: mul 11.5, matmul 6.0, gt 99, relu 102, "
          "max 947 ms).")


if __name__ == "__main__":
    main()

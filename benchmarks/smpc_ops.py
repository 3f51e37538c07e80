"""SMPC ops on two in-process parties (bob, alice) and a crypto provider, fixed point (base 10,
3 fractional digits, as PySyft), next to plain torch and CrypTen's two-process figures.

For each op: median milliseconds per op (the op plus flushing its buffered commands; `.get()`
is not included), the bytes every frame carried (coordinator <-> parties, coordinator <->
provider, provider -> parties; requests and replies), communication rounds of the online phase
(openings), provider round trips, and plain torch's time on the same data. Each op runs twice:
"online" with its primitives dealt ahead of time (PrimitiveStore.provide, the preprocessing
phase) and "total" with them dealt on demand (one provider round trip per op). A fixed-point
mul/matmul is a Beaver product rescaled by SecureML's local truncation (two parties): 1 round
online (open eps and delta; the finish and the rescaling are pipelined), one LocalStep message
per party; both parties compute in this process, so their CPU time adds up.

CrypTen 0.4.1 figures (measurements.md; 2 processes, gloo, 16-bit fixed point, TFP mode,
median; the brief quotes mul 2.5, matmul 3.1, gt 29, relu 30, max 221 ms).
In-process parties exchange encoded frames through function calls, so these times are CPU cost;
over RabbitMQ each round adds one broker round trip (~0.5 ms quiet, measurements.md): every
party is asked at once (fedmq.client.call_all).

With --amqp, a second table times the same ops with the parties and the provider as
`fedmq worker` processes behind RabbitMQ (FEDMQ_AMQP_URL or --url), and adds the CPU time
each process (this coordinator, bob, alice, the provider and, when it runs here, the broker)
spent per op in the online loop: on 2 cores their sum over 2 bounds the wall time from below.

A comparison (gt) is 4 rounds, relu 4 (the product fused into the comparison), max over 1 000
values 20 (a tournament of groups of 4); every party derives its dealt shares from a PRG seed,
only the last also gets the corrections of correlated values (provider.handle_deal_request).

The last three rows are issue 15's end-to-end targets (the `target` column): the primitives of
encrypted inference of a 784-500-10 MLP on a batch of 50 (with the weights' Beaver masks cached,
and without) and of one SGD step of 784-128-64-10 at batch 64; their "online" figure deals
ahead what one recorded run took (PrimitiveStore.record). SPU: SecretFlow SPU 0.9.5 SEMI2K with
one process per party (its simulator in brackets), measurements.md; CrypTen: TFP mode.

Run: python benchmarks/smpc_ops.py [--repeats 15] [--amqp]
"""
from __future__ import annotations

import argparse
import os
import resource
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

CRYPTEN_MS = {"mul 100x100": 2.5, "matmul 100x100": 3.1, "gt 100x100": 29.0,
              "relu 100x100": 30.0, "max 1000": 221.0, "add 1000": 0.30,
              "mlp infer b50": 277.0, "sgd step b64": 135.0, "sgd §13 autograd": 135.0}
#: SecretFlow SPU 0.9.5 SEMI2K, one process per party (measurements.md; simulator in brackets)
SPU_MS = {"mul 100x100": "6.8 (4.0)", "matmul 100x100": "6.3 (5.5)", "gt 100x100": "15.9 (12.4)",
          "relu 100x100": "19.6 (14.8)", "max 1000": "58 (14.9)", "mlp infer b50": "163 (153)",
          "sgd step b64": "106 (135)", "sgd §13 autograd": "106 (135)"}
#: issue 15's targets (ms, 2 parties + provider, on a quiet machine)
TARGET_MS = {"max 1000": 20.0, "mlp infer b50": 80.0, "sgd step b64": 100.0,
             "sgd §13 autograd": 100.0}


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

    def prims_mul(shape):  # two parties rescale locally: no truncation pair
        return [("mul", triple_params("mul", shape, shape))]

    def prims_max(k):
        return max_primitives((), k, with_indices=False)

    return [
        ("add 1000", lambda: s1000 + t1000, lambda: v1000 + w1000, []),
        ("mul 1000", lambda: s1000 * t1000, lambda: v1000 * w1000, prims_mul((1000,))),
        ("mul 100x100", lambda: sm * sn, lambda: m * n, prims_mul((100, 100))),
        ("matmul 100x100", lambda: sm @ sn, lambda: m @ n,
         [("matmul", triple_params("matmul", (100, 100), (100, 100)))]),
        ("gt 100x100", lambda: sm > sn, lambda: m > n, comparison_primitives((100, 100))),
        ("relu 100x100", lambda: sm.relu(), lambda: m.relu(),
         comparison_primitives((100, 100))[:-1] + [("bitmul", {"shape": [100, 100]})]),
        ("max 1000", lambda: s1000.max(), lambda: v1000.max(), prims_max(1000)),
        *mlp_cases(shared, cp),
    ]


def mlp_cases(shared, cp):
    """The primitives behind encrypted inference of a 784-500-10 MLP on a batch of 50 (two
    matmuls, relu, argmax) and one SGD step of 784-128-64-10 at batch 64 (MSE on one-hot,
    relu's derivative as a comparison bit, lr 0.02): issue 15's targets. Weights and data are
    fixed-point shared; their preprocessing is recorded from one run (PrimitiveStore.record).
    Inference runs twice:
    with the weights' Beaver masks cached (`PrimitiveStore.cache_operand`: their masked
    opening is reused across batches) and without."""
    import torch.nn.functional as F

    x, sx = shared(50, 784)
    w1, sw1 = shared(784, 500)
    b1, sb1 = shared(500)
    w2, sw2 = shared(500, 10)
    b2, sb2 = shared(10)
    _, cw1 = shared(784, 500)  # the same model's weights, with cached masks
    _, cw2 = shared(500, 10)
    cw1.child, cw2.child = sw1.child.copy(), sw2.child.copy()
    for weight in (cw1, cw2):
        primitive_store(cp).cache_operand(weight.child)

    def infer():
        return ((sx @ cw1 + sb1).relu() @ cw2 + sb2).argmax(dim=1)

    def infer_uncached():
        return ((sx @ sw1 + sb1).relu() @ sw2 + sb2).argmax(dim=1)

    def infer_plain():
        return (F.relu(x @ w1 + b1) @ w2 + b2).argmax(dim=1)

    xs, sxs = shared(64, 784)
    onehot = F.one_hot(torch.randint(0, 10, (64,)), 10).float()
    ys = onehot.fix_precision().share(*sx.child.locations, crypto_provider=sx.child.crypto_provider)
    layers = [shared(784, 128), shared(128), shared(128, 64), shared(64), shared(64, 10),
              shared(10)]
    lr = 0.02

    def sgd_step():
        (_, v1), (_, c1), (_, v2), (_, c2), (_, v3), (_, c3) = layers
        z1 = sxs @ v1 + c1
        m1 = z1 > 0
        h1 = z1 * m1
        z2 = h1 @ v2 + c2
        m2 = z2 > 0
        h2 = z2 * m2
        d3 = ((h2 @ v3 + c3 - ys) * 2) / onehot.numel()  # exact division by a public int
        d2 = (d3 @ v3.t()) * m2
        d1 = (d2 @ v2.t()) * m1
        return [v3 - (h2.t() @ d3) * lr, c3 - d3.sum(0) * lr, v2 - (h1.t() @ d2) * lr,
                c2 - d2.sum(0) * lr, v1 - (sxs.t() @ d1) * lr, c1 - d1.sum(0) * lr]

    plain = [t for t, _ in layers]

    def sgd_plain():
        params = [p.clone().requires_grad_() for p in plain]
        v1, c1, v2, c2, v3, c3 = params
        out = F.relu(F.relu(xs @ v1 + c1) @ v2 + c2) @ v3 + c3
        F.mse_loss(out, onehot).backward()
        with torch.no_grad():
            return [p - lr * p.grad for p in params]

    # The same step as the notes' §13 writes it: a model shared with requires_grad=True, the
    # loss `((output - target)**2).sum().refresh() / batch_size`, loss.backward() through the
    # AutogradTensor graph (data shared with requires_grad=True too, so data.grad is computed,
    # as in the notes), and optim.SGD(...).fix_precision().step().
    from torch import nn, optim

    parties, provider = sx.child.locations, sx.child.crypto_provider
    net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                        nn.Linear(64, 10))
    net.fix_precision().share(*parties, crypto_provider=provider, requires_grad=True)
    opt = optim.SGD(net.parameters(), lr=lr).fix_precision()
    data = xs.fix_precision().share(*parties, crypto_provider=provider, requires_grad=True)
    target = onehot.fix_precision().share(*parties, crypto_provider=provider, requires_grad=True)

    def sgd_autograd():
        opt.zero_grad()
        output = net(data)
        loss = ((output - target) ** 2).sum().refresh() / output.shape[0]
        loss.backward()
        opt.step()

    plain_net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                              nn.Linear(64, 10))
    plain_opt = optim.SGD(plain_net.parameters(), lr=lr)

    def sgd_autograd_plain():
        plain_opt.zero_grad()
        output = plain_net(xs)
        (((output - onehot) ** 2).sum() / output.shape[0]).backward()
        plain_opt.step()

    return [("mlp infer b50", infer, infer_plain, None),
            ("mlp b50 uncached", infer_uncached, infer_plain, None),
            ("sgd step b64", sgd_step, sgd_plain, None),
            ("sgd §13 autograd", sgd_autograd, sgd_autograd_plain, None)]


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of process `pid` (None: this one, every thread), in seconds;
    NaN when it cannot be read (a broker run by another user on another machine)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_cases(cases, parties, cp, repeats: int, meter: "Meter | None",
              processes: "dict[str, int | None] | None" = None) -> None:
    """One table row per case. With `processes` (label -> pid; None for this process), also
    the CPU milliseconds each used per op in the online loop (where the time goes when the
    parties are services: on 2 cores the sum over processes bounds the wall time from
    below at half of it)."""
    header = (f"{'op':<16}{'online ms':>10}{'total ms':>10}{'target':>7}{'torch ms':>10}"
              f"{'ratio':>9}{'KB moved':>10}{'rounds':>7}{'deals':>6}{'SPU mp (sim)':>13}"
              f"{'CrypTen ms':>11}")
    if processes:
        header += "  CPU ms/op online: " + " / ".join(processes)
    print(header)
    store = primitive_store(cp)   # the provider's primitives, in its hook's context
    flush_all = cp.context.flush_all  # sends every client's buffered commands (that context)
    for name, secure, plain, prims in cases:
        secure(), flush_all()  # warm up (meta cache, allocator)
        online, total = [], []
        store.clear()
        if prims is None:  # what the op takes, recorded from one run of it
            store.record()
            secure(), flush_all()
            prims = store.stop_recording()
        for kind, params in prims:  # preprocessing: every instance the repeats need
            store.provide(cp, parties, kind, params, repeats)
        cpu0 = {k: _cpu_seconds(pid) for k, pid in (processes or {}).items()}
        for _ in range(repeats):
            t0 = time.perf_counter()
            secure()
            flush_all()
            online.append(time.perf_counter() - t0)
        cpu = " / ".join(f"{(_cpu_seconds(pid) - cpu0[k]) * 1e3 / repeats:.0f}"
                         for k, pid in (processes or {}).items())
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
        print(f"{name:<16}{on:>10.2f}{tot:>10.2f}{TARGET_MS.get(name, '-'):>7}{pt:>10.4f}"
              f"{on / pt:>9.0f}x{kb}{rounds:>7}{deals:>6}{SPU_MS.get(name, '-'):>13}"
              f"{crypten if crypten is not None else '-':>11}" + (f"  {cpu}" if cpu else ""))


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
        cases = make_cases(parties, cp)
        print(f"\nover RabbitMQ ({url.split('@')[-1]}): bob, alice and the provider are "
              f"`fedmq worker` processes; median of {repeats}; KB not metered")
        processes = {"coordinator": None, "bob": procs[0].pid, "alice": procs[1].pid,
                     "provider": procs[2].pid}
        broker = _broker_pid()
        if broker is not None:
            processes["broker"] = broker
        run_cases(cases, parties, cp, repeats, None, processes)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        for i in ids:
            _delete_queue(url, f"fedmq.worker.{i}")


def _broker_pid() -> int | None:
    """The local RabbitMQ node's Erlang VM (beam.smp), if there is exactly one; else None."""
    try:
        out = subprocess.run(["pgrep", "-x", "beam.smp"], capture_output=True, text=True,
                             timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out[0]) if len(out) == 1 else None


def _delete_queue(url: str, queue: str) -> None:
    """The services' queues are durable; leave none behind."""
    import asyncio

    from fedmq.transport.amqp import delete_queues
    asyncio.run(delete_queues(url, queue))


if __name__ == "__main__":
    main()

"""fedmq over RabbitMQ vs raw aio-pika, measured in the same run against the same broker.

Both sides are separate processes talking through the broker on loopback:
* raw: an aio-pika echo service (publish -> consume -> reply by direct reply-to, nothing else);
* fedmq: a worker service (`fedmq worker`), driven through pointers from this process.

Figures:
1. round trip of one remote op plus its get (`(x + 1).get()`: the op and the get ride in one
   frame, the value comes back in one reply), vs the raw RPC round trip of a 200 B message
   (median and p99); fedmq publishes with publisher confirms by default, posted frames
   persistent (they survive a broker restart while waiting in a queue, and what a dropped
   connection left unconfirmed is published again) and calls transient (their reply can
   only reach the caller's connection), and the same is measured without confirms
   (`persistent=False`), what they cost;
2. pipelined remote ops per second (`y = y + 1` N times, then one `.get()`), vs raw one-way
   messages per second (publish N messages of 200 B, consumer counts them);
3. the seed CNN's 1.7 MB state: `model.send(w)` + an eager get, vs raw publish of the same
   bytes and an echo back (both move 2 x 1.7 MB).
Targets: round trip <= 1.3x raw (issue 11); pipelined >= 50% of raw msg/s; 1.7 MB >= 70% of raw
bandwidth. Peer figures (shared/reference/measurements.md, quiet machine): aio-pika RPC 0.56 ms,
~4 000 msg/s end to end without confirms, ~430 MB/s for 1.7 MB payloads.
Run: python benchmarks/transport.py [--url amqp://...]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid

import aio_pika
import torch

URL = os.environ.get("FEDMQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RAW_QUEUE = "fedmq.bench.raw"
COUNT_QUEUE = "fedmq.bench.count"


# -- the raw echo service (runs in a subprocess) --------------------------------------------------
async def raw_server(url: str) -> None:
    conn = await aio_pika.connect_robust(url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=64)
    rpc = await ch.declare_queue(RAW_QUEUE, auto_delete=True)
    counter = await ch.declare_queue(COUNT_QUEUE, auto_delete=True)
    state = {"n": 0}

    async def echo(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        await ch.default_exchange.publish(aio_pika.Message(msg.body,
                                                           correlation_id=msg.correlation_id),
                                          routing_key=msg.reply_to, mandatory=False)
        await msg.ack()

    async def count(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        await msg.ack()
        if msg.body == b"report":
            await ch.default_exchange.publish(
                aio_pika.Message(str(state["n"]).encode(), correlation_id=msg.correlation_id),
                routing_key=msg.reply_to, mandatory=False)
            state["n"] = 0
        else:
            state["n"] += 1

    await rpc.consume(echo)
    await counter.consume(count)
    print("ready", flush=True)
    await asyncio.Future()


class RawClient:
    """Synchronous facade over an aio-pika client on its own loop thread (as fedmq's is)."""

    def __init__(self, url: str) -> None:
        import threading
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self._run(self._connect(url))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    async def _connect(self, url: str) -> None:
        self.conn = await aio_pika.connect_robust(url)
        self.ch = await self.conn.channel()
        self.futures: dict[str, asyncio.Future] = {}
        q = await self.ch.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await q.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, msg) -> None:
        fut = self.futures.pop(msg.correlation_id, None)
        if fut is not None:
            fut.set_result(msg.body)

    async def _call(self, queue: str, body: bytes) -> bytes:
        corr = uuid.uuid4().hex
        fut = self.loop.create_future()
        self.futures[corr] = fut
        await self.ch.default_exchange.publish(
            aio_pika.Message(body, reply_to="amq.rabbitmq.reply-to", correlation_id=corr),
            routing_key=queue)
        return await fut

    def call(self, body: bytes, queue: str = RAW_QUEUE) -> bytes:
        return self._run(self._call(queue, body))

    async def _burst(self, n: int, body: bytes) -> int:
        for _ in range(n):
            await self.ch.default_exchange.publish(aio_pika.Message(body), routing_key=COUNT_QUEUE)
        return int(await self._call(COUNT_QUEUE, b"report"))

    def burst(self, n: int, body: bytes) -> int:
        return self._run(self._burst(n, body))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=URL)
    parser.add_argument("--raw-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rtt-samples", type=int, default=400)
    parser.add_argument("--ops", type=int, default=4000)
    parser.add_argument("--transfers", type=int, default=20)
    args = parser.parse_args()
    if args.raw_server:
        asyncio.run(raw_server(args.url))
        return

    import fedmq as sy
    from fedmq.module import fetch
    sys.path.insert(0, os.path.dirname(__file__))
    from fedmq.models import SeedCNN as Net

    worker_id = f"bench-{uuid.uuid4().hex[:6]}"
    server = subprocess.Popen([sys.executable, __file__, "--raw-server", "--url", args.url],
                              stdout=subprocess.PIPE, text=True)
    worker = subprocess.Popen([sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id,
                               "--url", args.url, "--log-level", "warning"])
    try:
        assert server.stdout.readline().strip() == "ready"
        raw = RawClient(args.url)
        hook = sy.TorchHook(torch)
        bob = sy.AMQPClientWorker(hook, id=worker_id, url=args.url, timeout=120)
        bob.wait_until_served(120)  # the worker process is starting
        fast_hook = sy.TorchHook(torch)  # a connection of its own, publishing transient frames
        bob_fast = sy.AMQPClientWorker(fast_hook, id=worker_id, url=args.url, timeout=120,
                                       persistent=False)
        x = torch.tensor([1.5]).send(bob)
        x_fast = torch.tensor([1.5]).send(bob_fast)
        small = b"x" * 200
        for _ in range(50):
            raw.call(small)
            (x + 1).get()
            (x_fast + 1).get()

        # 1. round trip, interleaved: a remote op plus its get (one frame out, one back)
        raw_rtt, fed_rtt, fast_rtt = [], [], []
        for _ in range(args.rtt_samples):
            t0 = time.perf_counter()
            raw.call(small)
            t1 = time.perf_counter()
            (x + 1).get()
            t2 = time.perf_counter()
            (x_fast + 1).get()
            t3 = time.perf_counter()
            raw_rtt.append(t1 - t0)
            fed_rtt.append(t2 - t1)
            fast_rtt.append(t3 - t2)
        rtt_ratio = statistics.median(fed_rtt) / statistics.median(raw_rtt)

        # 2. throughput: raw one-way messages vs pipelined remote ops
        t0 = time.perf_counter()
        got = raw.burst(args.ops, small)
        raw_rate = got / (time.perf_counter() - t0)
        y = torch.zeros(4).send(bob)
        t0 = time.perf_counter()
        for _ in range(args.ops):
            y = y + 1
        value = y.get()
        fed_rate = args.ops / (time.perf_counter() - t0)
        assert value.tolist() == [float(args.ops)] * 4 and got == args.ops

        # 3. 1.7 MB state: send + get vs raw echo of the same bytes
        model = Net()
        state_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        blob = os.urandom(state_bytes)
        raw_t, fed_t = [], []
        for _ in range(args.transfers):
            t0 = time.perf_counter()
            assert len(raw.call(blob)) == len(blob)
            t1 = time.perf_counter()
            model.send(bob)
            fetch(model)  # an eager get: a deferred one followed by a send would move nothing
            t2 = time.perf_counter()
            raw_t.append(t1 - t0)
            fed_t.append(t2 - t1)
        raw_bw = 2 * state_bytes / statistics.median(raw_t) / 1e6
        fed_bw = 2 * state_bytes / statistics.median(fed_t) / 1e6

        print(f"broker {args.url.split('@')[-1]}; worker and raw echo service in separate "
              f"processes; interleaved")
        print(f"1. round trip      fedmq {statistics.median(fed_rtt) * 1e3:6.2f} ms "
              f"(p99 {pct(fed_rtt, 0.99) * 1e3:6.2f})  raw {statistics.median(raw_rtt) * 1e3:6.2f}"
              f" ms (p99 {pct(raw_rtt, 0.99) * 1e3:6.2f})  ratio {rtt_ratio:.2f}x  "
              f"[target <= 1.3x; aio-pika quiet: 0.56 ms]")
        print(f"   no confirms     fedmq {statistics.median(fast_rtt) * 1e3:6.2f} ms "
              f"(p99 {pct(fast_rtt, 0.99) * 1e3:6.2f})  ratio "
              f"{statistics.median(fast_rtt) / statistics.median(raw_rtt):.2f}x  "
              f"(confirms cost {statistics.median(fed_rtt) / statistics.median(fast_rtt):.2f}x; "
              f"a call travels transient either way)")
        print(f"2. throughput      fedmq {fed_rate:8.0f} pipelined ops/s   raw {raw_rate:8.0f} "
              f"msg/s   fedmq/raw {fed_rate / raw_rate:.0%}  [target >= 50%; aio-pika: ~4 000/s]")
        print(f"3. {state_bytes / 1e6:.2f} MB state   fedmq {fed_bw:6.0f} MB/s (send+get "
              f"{statistics.median(fed_t) * 1e3:.1f} ms)  raw {raw_bw:6.0f} MB/s  fedmq/raw "
              f"{fed_bw / raw_bw:.0%}  [target >= 70%; aio-pika: ~430 MB/s]")
    finally:
        worker.terminate()
        server.terminate()
        worker.wait(30)
        server.wait(30)
        _delete_queue(args.url, f"fedmq.worker.{worker_id}")


def _delete_queue(url: str, queue: str) -> None:
    """The benchmark's worker queue is durable; leave none behind."""
    from fedmq.transport.amqp import delete_queues
    asyncio.run(delete_queues(url, queue))


if __name__ == "__main__":
    main()

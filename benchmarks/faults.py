"""Faults on a real broker, and what they cost: time to recover, updates lost, updates applied
twice.

Runs on a RabbitMQ node of its own (started here, on spare ports, in a temporary directory:
tests/private_rabbitmq.py), so restarting it disturbs nobody. One `fedmq worker` process holds
a counter; a client increments it with one call per increment (`Tensor.add_` with a reply)
while a fault strikes. A call that returns is an acknowledged increment (A); a call that
raises (the fault) may or may not have been applied (U). At the end the counter is read (V):
    lost          = max(0, A - V)        acknowledged increments that are not in the counter
    applied twice = max(0, V - (A + U))  more increments applied than were ever sent
    recovery      = seconds from the fault to the next call that succeeds
Faults:
1. the broker closes the worker's connection (management API), mid-traffic;
2. the broker closes the client's connection, mid-traffic;
3. the broker node restarts (SIGTERM, then started again), mid-traffic;
4. 50 poison frames (garbage, wrong field types, bad chunk headers) interleaved with traffic;
5. the worker is SIGKILLed and restarted (its memory is gone: the counter starts again, and
   the client is told with WorkerRestartedError; lost/twice count from the restart on).
Faults 1-3 are run again with posted increments (pipelined, no reply awaited: what `.send()`
and in-place ops on pointers do), posted every 10 ms until the fault is over and a while
after: every one of the P posted increments must be in the counter exactly once (they are
published with publisher confirms; what was not confirmed, or could not be published while the
broker was away, is published again once the connection is back, and the worker runs each
message id once):
    lost = max(0, P - V)     applied twice = max(0, V - P)
Target (issue 13): 0 lost and 0 applied twice for every fault.
Run: python benchmarks/faults.py [--increments 200]
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the private node helper lives with the tests

import fedmq  # noqa: E402
from fedmq import messages as m, serde  # noqa: E402
from fedmq.ids import new_id  # noqa: E402
from fedmq.management import api_get, api_request  # noqa: E402
from private_rabbitmq import PrivateRabbitMQ  # noqa: E402

WORKER = "faulty"
EXPECTED = (fedmq.ConnectionLost, fedmq.ReplyTimeout, fedmq.WorkerNotFoundError,
            fedmq.TransportError, fedmq.WorkerRestartedError)


class Run:
    def __init__(self, node: PrivateRabbitMQ, workdir: pathlib.Path) -> None:
        self.node = node
        self.workdir = workdir
        self.worker: subprocess.Popen | None = None
        self.start_worker()
        self.hook = fedmq.TorchHook(torch)
        self.client = fedmq.AMQPClientWorker(self.hook, id=WORKER, url=node.amqp_url,
                                             timeout=30).wait_until_served(60)

    def start_worker(self) -> None:
        log = open(self.workdir / "worker.log", "a")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "fedmq.cli", "worker", "--id", WORKER, "--url",
             self.node.amqp_url, "--state-dir", str(self.workdir / "state")],
            stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.hook.context.close()
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait(30)

    def new_counter(self) -> int:
        counter_id = new_id()
        self.call(m.ObjectMessage([m.StoredObject(counter_id, torch.zeros(1))]))
        return counter_id

    def call(self, message, timeout: float = 30):
        return self.client.call(message, timeout=timeout)

    def increment(self, counter_id: int) -> None:
        self.call(m.Command("Tensor.add_", (m.Ref(counter_id), 1), {}, [None], reply=True))

    def read(self, counter_id: int) -> int:
        deadline = time.monotonic() + 90
        while True:
            try:
                return int(self.call(m.GetRequest([counter_id], delete=False))[0].item())
            except (fedmq.ConnectionLost, fedmq.ReplyTimeout, fedmq.WorkerNotFoundError,
                    fedmq.TransportError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def traffic(self, counter_id: int, n: int, fault, at: int) -> dict:
        """n increments; `fault()` runs (in a thread) when increment `at` is sent."""
        acked = unknown = 0
        fault_time = recovered = None
        errors: list[str] = []
        thread = None
        i = 0
        after_fault = None  # increments still to make once the fault is over
        while True:
            if thread is not None and after_fault is None and not thread.is_alive():
                after_fault = i + (n - at)
            if (after_fault is not None and i >= after_fault) or (thread is None and i >= n):
                break
            if i == at and thread is None:
                fault_time = time.monotonic()
                thread = threading.Thread(target=fault)
                thread.start()
            try:
                self.increment(counter_id)
                acked += 1
                if fault_time is not None and recovered is None and errors:
                    recovered = time.monotonic() - fault_time
            except fedmq.WorkerRestartedError:
                return {"restarted": True, "acked": acked, "unknown": unknown,
                        "fault_time": fault_time, "errors": errors}
            except EXPECTED as exc:
                unknown += 1
                errors.append(type(exc).__name__)
                time.sleep(0.1)
            i += 1
        if thread is not None:
            thread.join()
        if recovered is None and fault_time is not None:
            recovered = 0.0 if not errors else float("nan")
        value = self.read(counter_id)
        return {"acked": acked, "unknown": unknown, "value": value, "recovery": recovered,
                "lost": max(0, acked - value), "twice": max(0, value - acked - unknown),
                "errors": errors}


    def posted_traffic(self, counter_id: int, n: int, fault, at: int) -> dict:
        """Posted increments: `fault()` runs (in a thread) at increment `at`; posting goes on
        every 10 ms until it is over, then `n - at` more."""
        engine = self.client.engine
        posted = 0
        thread = threading.Thread(target=fault)
        started = after = None
        while after is None or posted < after:
            if posted == at:
                started = time.monotonic()
                thread.start()
            if started is not None and after is None and not thread.is_alive():
                after = posted + (n - at)
            engine.post(WORKER, m.Command("Tensor.add_", (m.Ref(counter_id), 1), {}, [None]))
            posted += 1
            time.sleep(0.01)
        thread.join()
        reported = None
        deadline = time.monotonic() + 90
        while True:
            try:
                value = int(self.call(m.GetRequest([counter_id], delete=False))[0].item())
                break
            except EXPECTED as exc:
                if "were never delivered" in str(exc):
                    reported = str(exc)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return {"posted": posted, "value": value, "lost": max(0, posted - value),
                "twice": max(0, value - posted), "reported": reported,
                "recovery": time.monotonic() - started}


def close_connection(node: PrivateRabbitMQ, name: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for conn in api_get("connections", node.management_url) or []:
            if (conn.get("client_properties") or {}).get("connection_name") == name:
                api_request("DELETE", f"connections/{urllib.parse.quote(conn['name'], safe='')}",
                            node.management_url)
                return
        time.sleep(0.3)
    raise RuntimeError(f"no connection named {name!r}")


def poison(node: PrivateRabbitMQ) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
    ch = conn.channel()
    ch.basic_consume("amq.rabbitmq.reply-to", lambda *_: None, auto_ack=True)  # replies
    bad = [b"garbage", bytes(serde.encode(m.Envelope(m.WIRE_VERSION, "x", m.Batch(5),
                                                           0, 7)))]
    for i in range(50):
        headers = {"x-fedmq-frame": f"p{i}", "x-fedmq-chunk": "zero", "x-fedmq-chunks": 2} \
            if i % 3 == 0 else None
        ch.basic_publish("fedmq.commands", WORKER, bad[i % 2], pika.BasicProperties(
            user_id="guest", headers=headers, message_id=f"poison-{i}",
            reply_to="amq.rabbitmq.reply-to"))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--increments", type=int, default=200)
    args = parser.parse_args()
    # the faults make aio-pika and aiormq log every lost connection: keep the table readable
    logging.basicConfig(level=logging.CRITICAL)
    n, at = args.increments, args.increments // 4
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fedmq-faults-"))
    node = PrivateRabbitMQ().start()
    run = Run(node, workdir)
    rows = []
    try:
        faults = [
            ("worker's connection closed", lambda: close_connection(node, f"fedmq worker {WORKER}")),
            ("client's connection closed", lambda: close_connection(node, "fedmq client")),
            ("broker restarted", node.restart),
            ("50 poison frames", lambda: poison(node)),
        ]
        for name, fault in faults:
            counter = run.new_counter()
            result = run.traffic(counter, n, fault, at)
            rows.append((name, result))
            print(f"{name:37s} recovery {result['recovery']:6.2f} s  lost {result['lost']}  "
                  f"applied twice {result['twice']}  (acked {result['acked']}, failed "
                  f"{result['unknown']}, counter {result['value']})", flush=True)

        for name, fault in faults[:3]:
            counter = run.new_counter()
            result = run.posted_traffic(counter, n, fault, at)
            rows.append((f"{name} (posted)", result))
            print(f"{name + ' (posted)':37s} lost {result['lost']}  applied twice "
                  f"{result['twice']}  (posted {result['posted']}, counter {result['value']}"
                  f"{'; loss reported' if result['reported'] else ''})", flush=True)

        # 5. SIGKILL the worker and restart it
        counter = run.new_counter()

        def kill_and_restart():
            run.worker.kill()
            run.worker.wait()
            run.start_worker()

        result = run.traffic(counter, n, kill_and_restart, at)
        started = time.monotonic()
        while True:  # the restarted worker: a new counter, increments from here on
            try:
                counter = run.new_counter()
                break
            except EXPECTED:
                time.sleep(0.2)
        recovery = time.monotonic() - (result.get("fault_time") or started)
        after = run.traffic(counter, n - at, lambda: None, n)
        print(f"{'worker SIGKILLed, restarted':37s} recovery {recovery:6.2f} s  lost "
              f"{after['lost']}  applied twice {after['twice']}  (the old counter is gone: "
              f"WorkerRestartedError {'raised' if result.get('restarted') else 'NOT raised'})",
              flush=True)
        rows.append(("worker SIGKILLed", after))
        bad = [name for name, r in rows if r["lost"] or r["twice"]]
        print("target: 0 lost and 0 applied twice for every fault: " +
              ("met" if not bad else f"NOT met for {', '.join(bad)}"))
    finally:
        run.stop()
        node.stop()


if __name__ == "__main__":
    main()

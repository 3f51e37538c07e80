"""Federated round time (issue 6, item 7): fedmq's coordinator against plain PyTorch, measured
in the same run.

1. The seed's §14 round (PySyft's asyncio websocket FL demo): 3 workers alice 0-3 / bob 4-6 /
   charlie 7-9 on MNIST 5k, 10 batches of 32 each, seed CNN, SGD lr 0.1 decayed x0.98 per
   round, FedAvg (McMahan et al., 2017). Three ways, `--rounds` rounds each, no evaluation:
   * plain: one process, no framework: for each worker in turn, build the model from the
     global weights, train its 10 batches with the same seeded shuffling as
     fedmq/fl/training.py, then average the three state_dicts (sample-weighted, float64);
   * in-process: `Coordinator` + `InProcessConnection` (every message serialized);
   * rabbitmq (`--url`): `Coordinator` + `AMQPRoundConnection`, one `fedmq worker` process
     per worker, so the 3 workers train in parallel (on however many cores there are).
   Reported: median round time, its ratio to plain (acceptance: rabbitmq / plain <= 1.25),
   the round's compute (sum of the workers' fit_seconds), and the test accuracy of the final
   global model of each run (they should agree: same batches, same weights).
2. Framework overhead alone: `--tiny-rounds` (default 1 000) rounds of `mnist-logreg` (7 850
   parameters), 3 workers, 1 batch of 8 per round, in-process and over RabbitMQ (the same 3
   worker processes), against the same rounds in plain PyTorch.
4. The model shipped as a plan (issue 14): the §14 round with `model="fedmq.models:SeedCNN"`
   (the same class, but traced on the coordinator into a model plan, sent once, then named by
   its digest; the workers run its ops) against the named `seed-cnn` (built by each worker),
   in-process and over RabbitMQ, named and plan runs alternating twice; acceptance: plan round
   / named round <= 1.1. The final weights of both agree (same batches, same steps).
3. Many workers: `--wide-workers` (default 50) workers, tiny model, 1 batch of 8, each holding
   an IID part of the MNIST 5k train set; in-process, and over RabbitMQ in `--wide-processes`
   (default 5) `fedmq worker --ids ...` processes (one WorkerService per id).
5. Secure aggregation (`--secure-aggregation secagg+`; alone with `--only-secure`, issue 16):
   the §14 round and the wide round against plain FedAvg on the same transport, in-process and
   over RabbitMQ, in `--secure-pairs` (default 3) alternating pairs of runs (FedAvg, then
   SecAgg+); the figure is the median over the pairs of the §14 ratio (acceptance <= 1.3) and
   of the wide round's extra ms per worker (acceptance <= 2).
Each fedmq run comes right after its plain baseline (the machine is shared; adjacent runs see
similar load). Round 1 of every run is left out of the medians; 3 plain §14 rounds warm the
process up first; the benchmark process tunes malloc as the worker services do
(fedmq.runtime). Per run: round time, the workers' fit time (sum, slowest) and the overhead
= round - slowest fit. Last, our figures next to the peers' in
/work/shared/reference/measurements.md (Flower 1.42, raw RabbitMQ RPC).
Run: python benchmarks/rounds.py [--url amqp://...] [--rounds 20] [--tiny-rounds 1000]
     [--secure-aggregation secagg+ [--only-secure] [--secure-pairs 3]]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
from fedmq.fl.training import batch_indices
from fedmq.fl.coordinator import Coordinator, TrainConfig, initial_weights, worker_seed
from fedmq.fl.launch import WorkerLauncher, thread_env
from fedmq.fl.secure import make_private_rounds
from fedmq.models import MODELS

WORKERS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}
DATASET = "mnist5k"
TIMEOUT = 300.0

# Peer figures (measurements.md, same machine class, loaded like this one): seconds.
FLOWER_SIM_2_ROUND, PLAIN_2_ROUND = 0.20, 0.10  # Flower simulation, 2 clients, warm; plain
FLOWER_DEPLOY_ROUND = 9.3  # Flower 1.42 deployment, SuperLink + 2 SuperNodes
FLOWER_SIM_50_ROUND, PLAIN_50_ROUND = 3.25, 2.7  # Flower simulation, 50 clients; plain
RABBIT_RPC_MS = 0.56  # aio-pika RPC round trip, 200 B, direct reply-to


@dataclass
class Run:
    """Round times of one run (round 1 included; `steady` leaves it out)."""
    name: str
    seconds: list[float]
    compute: list[float] = field(default_factory=list)  # sum of the workers' fit time
    slowest: list[float] = field(default_factory=list)  # the slowest worker's fit time
    wall: float = 0.0  # the whole run, start to end
    workers: int = 0
    weights: dict | None = None

    @property
    def steady(self) -> list[float]:
        return self.seconds[1:] or self.seconds

    @property
    def median(self) -> float:
        return statistics.median(self.steady)

    @property
    def p90(self) -> float:
        s = sorted(self.steady)
        return s[int(0.9 * (len(s) - 1))]

    def median_of(self, values: list[float]) -> float:
        return statistics.median(values[1:] or values)

    @property
    def overhead(self) -> float:
        """Median of (round time - slowest worker's fit): what the framework adds on top of
        the round's critical path."""
        return self.median_of([s - f for s, f in zip(self.seconds, self.slowest)])

    @property
    def rounds_per_s(self) -> float:
        return len(self.steady) / sum(self.steady)


# -- plain PyTorch: the same rounds in one process, no framework -----------------------------

def plain_rounds(data: dict, model: str, rounds: int, batch_size: int, num_batches: int,
                 lr: float = 0.1, seed: int = 1) -> Run:
    """`rounds` FedAvg rounds over `data` ({worker: (images, targets)}), sequentially."""
    weights = initial_weights(model, seed)
    lr0 = lr
    seconds, compute, slowest = [], [], []
    started_run = time.perf_counter()
    for round in range(1, rounds + 1):
        started = time.perf_counter()
        sums, total, busy, longest = {}, 0.0, 0.0, 0.0
        for worker_id, (x, y) in data.items():
            fit_started = time.perf_counter()
            net = MODELS[model]()
            net.load_state_dict(weights)
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            gen = torch.Generator().manual_seed(worker_seed(seed, round, worker_id))
            net.train()
            seen = 0
            for index in batch_indices(len(x), batch_size, num_batches, gen):
                opt.zero_grad()
                loss = F.nll_loss(net(x[index]), y[index])
                loss.backward()
                opt.step()
                loss.item()
                seen += len(index)
            busy += time.perf_counter() - fit_started
            longest = max(longest, time.perf_counter() - fit_started)
            for name, t in net.state_dict().items():
                term = t.detach().to(torch.float64) * seen
                sums[name] = sums[name].add_(term) if name in sums else term
            total += seen
        weights = {name: (s / total).to(weights[name].dtype) for name, s in sums.items()}
        lr = max(0.98 * lr, 0.01 * lr0)  # TrainConfig's decay and floor
        seconds.append(time.perf_counter() - started)
        compute.append(busy)
        slowest.append(longest)
    return Run("plain", seconds, compute, slowest, time.perf_counter() - started_run,
               workers=len(data), weights=weights)


# -- fedmq: the coordinator over a connection ------------------------------------------------

async def coordinated(name: str, connection, workers: list[str], config: TrainConfig,
                      privacy: str | None = None) -> Run:
    coordinator = Coordinator(connection, workers, config, echo=lambda line: None,
                              privacy=make_private_rounds(privacy, seed=config.seed))
    started = time.perf_counter()
    try:
        history = await coordinator.run()
    finally:
        await connection.aclose()
    wall = time.perf_counter() - started
    failed = [r.round for r in history if r.status != "ok" or r.failed]
    if failed:
        raise RuntimeError(f"{name}: rounds with failures: {failed[:5]} "
                           f"{history[failed[0] - 1].failed}")
    fits = [[w["fit_seconds"] for w in r.workers.values()] for r in history]
    return Run(name, [r.seconds for r in history], [sum(f) for f in fits],
               [max(f) for f in fits], wall, workers=len(workers), weights=coordinator.weights)


def run_in_process(name: str, workers: dict, config: TrainConfig,
                   privacy: str | None = None) -> Run:
    return asyncio.run(coordinated(name, InProcessConnection(workers), list(workers), config,
                                   privacy))


def run_over_amqp(name: str, url: str, worker_ids: list[str], config: TrainConfig,
                  privacy: str | None = None) -> Run:
    async def go() -> Run:
        connection = await AMQPRoundConnection.connect(url)
        probe = Coordinator(connection, worker_ids, config, echo=lambda line: None)
        missing = await probe.wait_for_workers(60)
        if missing:
            raise RuntimeError(f"workers not answering: {missing[:5]}")
        return await coordinated(name, connection, worker_ids, config, privacy)
    return asyncio.run(go())


def seed_config(rounds: int) -> TrainConfig:
    return TrainConfig(rounds=rounds, eval_every=0, round_timeout=TIMEOUT)


def plan_config(rounds: int) -> TrainConfig:
    """The §14 round with the seed CNN shipped as a model plan (not built by name)."""
    return TrainConfig(rounds=rounds, eval_every=0, round_timeout=TIMEOUT,
                       model="fedmq.models:SeedCNN", input_shape="1,28,28")


def plan_versus_named(results: list, label: str, named, planned) -> None:
    """Named, plan, named, plan: adjacent runs see similar load; the pair of medians kept."""
    runs = {"named": [], "plan": []}
    for _ in range(2):
        runs["named"].append(named())
        runs["plan"].append(planned())
    best = {k: min(v, key=lambda r: r.median) for k, v in runs.items()}
    for kind, run in best.items():
        run.name = f"{kind}"
        print(line(run, best["named"] if kind == "plan" else None).replace(" plain", " named"))
    ratio = best["plan"].median / best["named"].median
    diff = max_diff(best["plan"].weights, best["named"].weights)
    print(f"  plan / named round: {ratio:.3f} (acceptance <= 1.1: "
          f"{'met' if ratio <= 1.1 else 'NOT met'}); max |w_plan - w_named| {diff:.1e}")
    results.append(("plan", label, ratio))


def tiny_config(rounds: int) -> TrainConfig:
    return TrainConfig(rounds=rounds, model="mnist-logreg", batch_size=8, num_batches=1,
                       eval_every=0, round_timeout=TIMEOUT)


# -- data and workers ------------------------------------------------------------------------

def partitions() -> dict:
    from fedmq.data import partition
    from fedmq.data.worker_data import partition_tensors
    return {w: partition_tensors(DATASET, partition.parse_labels(labels))
            for w, labels in WORKERS.items()}


def in_process_workers(data: dict) -> dict:
    """fedmq `Worker`s holding `data` ({id: (images, targets)}) under the service's tags."""
    from fedmq.extensions import load_extensions
    from fedmq.ids import new_id
    from fedmq.worker import Worker

    load_extensions()  # the Fit / Evaluate handlers
    workers = {}
    for worker_id, (x, y) in data.items():
        worker = Worker(worker_id)
        worker.store.put(new_id(), x, (f"#{DATASET}", "#data", "#train"), "benchmark")
        worker.store.put(new_id(), y, (f"#{DATASET}", "#target", "#train"), "benchmark")
        workers[worker_id] = worker
    return workers


def iid_parts(n_workers: int) -> dict:
    """The same IID parts `fedmq worker --iid-parts N` gives its ids."""
    from fedmq.data import partition
    from fedmq.data.worker_data import partition_tensors
    x, y = partition_tensors(DATASET)
    return {f"w{i}": (x[torch.from_numpy(p)], y[torch.from_numpy(p)])
            for i, p in enumerate(partition.iid(len(y), n_workers, 0))}


@torch.no_grad()
def accuracy(model: str, weights: dict) -> float:
    from fedmq.data.worker_data import partition_tensors
    x, y = partition_tensors(DATASET, testing=True)
    net = MODELS[model]()
    net.load_state_dict(weights)
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@contextlib.contextmanager
def launched(url: str, logs: str, processes: int, threads: int = 0):
    """Worker processes for one part of the benchmark; stopped, and their durable queues
    deleted, at the end."""
    from fedmq.transport.amqp import delete_queues, queue_name

    launcher = WorkerLauncher(url, logs, env=thread_env(processes, threads or None))
    try:
        yield launcher
    finally:
        ids = [w for hosted in launcher.hosted.values() for w in hosted]
        launcher.stop_all()
        asyncio.run(delete_queues(url, *(queue_name(w) for w in ids)))


# -- output ----------------------------------------------------------------------------------

@dataclass
class Result:
    section: str  # "s14", "tiny", "wide"
    run: Run
    plain: Run  # the plain-PyTorch baseline measured just before `run`

    @property
    def ratio(self) -> float:
        return self.run.median / self.plain.median


def line(run: Run, base: Run | None = None) -> str:
    text = (f"  {run.name:<11} round {run.median * 1e3:7.1f} ms (p90 {run.p90 * 1e3:7.1f})"
            f"  {run.rounds_per_s:6.1f} rounds/s  total {run.wall:5.1f} s"
            f"  fits: sum {run.median_of(run.compute) * 1e3:7.1f} ms,"
            f" slowest {run.median_of(run.slowest) * 1e3:7.1f} ms")
    if base is not None:
        text += f"  | x{run.median / base.median:.2f} plain"
    return text


def measure(results: list, section: str, plain, framework) -> Run:
    """Plain PyTorch, then the framework right after it (the machine is shared: adjacent
    measurements see similar load); both printed, the pair kept for the summary."""
    base = plain()
    print(line(base))
    run = framework()
    print(line(run, base))
    results.append(Result(section, run, base))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="also measure over this broker")
    parser.add_argument("--rounds", type=int, default=20, help="§14 rounds per run")
    parser.add_argument("--tiny-rounds", type=int, default=1000)
    parser.add_argument("--wide-workers", type=int, default=50)
    parser.add_argument("--wide-processes", type=int, default=5)
    parser.add_argument("--wide-rounds", type=int, default=30)
    parser.add_argument("--worker-threads", type=int, default=0,
                        help="torch threads per worker process (OMP_NUM_THREADS; 0: the "
                             "cores split between the worker processes, as `fedmq train "
                             "--launch` does)")
    parser.add_argument("--secure-aggregation", default=None, choices=["secagg+"],
                        help="[5]: the §14 round (3 workers) and the wide round (50 workers) "
                             "with this secure aggregation against plain FedAvg, same "
                             "transport, same run (issue 16: <= 1.3x; <= 2 ms per worker)")
    parser.add_argument("--secure-pairs", type=int, default=None,
                        help="[5]: alternating FedAvg / secure runs per part (default 3)")
    parser.add_argument("--only-secure", action="store_true",
                        help="run section [5] only (needs --secure-aggregation)")
    args = parser.parse_args()
    if args.secure_pairs is not None and not args.secure_aggregation:
        parser.error("--secure-pairs needs --secure-aggregation")
    args.secure_pairs = 3 if args.secure_pairs is None else args.secure_pairs
    if args.secure_pairs < 1:
        parser.error("--secure-pairs must be at least 1")
    if args.only_secure:
        if not args.secure_aggregation:
            parser.error("--only-secure needs --secure-aggregation")
        return secure_main(args)
    from fedmq import runtime
    runtime.tune_malloc()  # as the worker services do; plain and in-process runs alike
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"{runtime.describe()}; dataset {DATASET}; round 1 of each run is left out of medians; "
          f"each fedmq run is preceded by its plain-PyTorch baseline")
    seed_data = partitions()
    wide_data = iid_parts(args.wide_workers)
    plain_rounds(seed_data, "seed-cnn", 3, 32, 10)  # warm-up (first conv calls), not reported
    results: list[Result] = []
    s14 = dict(data=seed_data, model="seed-cnn", rounds=args.rounds, batch_size=32,
               num_batches=10)
    tiny = dict(data=seed_data, model="mnist-logreg", rounds=args.tiny_rounds, batch_size=8,
                num_batches=1)
    wide = dict(data=wide_data, model="mnist-logreg", rounds=args.wide_rounds, batch_size=8,
                num_batches=1)
    accuracy_runs = []

    print(f"\n[1] §14 round: 3 workers x 10 batches of 32, seed CNN, {args.rounds} rounds")
    accuracy_runs.append(measure(
        results, "s14", lambda: plain_rounds(**s14), lambda: run_in_process(
            "in-process", in_process_workers(seed_data), seed_config(args.rounds))))
    accuracy_runs.insert(0, results[-1].plain)
    print(f"\n[2] tiny model: mnist-logreg, 3 workers x 1 batch of 8, {args.tiny_rounds} rounds")
    measure(results, "tiny", lambda: plain_rounds(**tiny), lambda: run_in_process(
        "in-process", in_process_workers(seed_data), tiny_config(args.tiny_rounds)))
    print(f"\n[3] {args.wide_workers} workers (IID parts of {DATASET}), mnist-logreg, "
          f"1 batch of 8, {args.wide_rounds} rounds")
    measure(results, "wide", lambda: plain_rounds(**wide), lambda: run_in_process(
        "in-process", in_process_workers(wide_data), tiny_config(args.wide_rounds)))

    plan_results: list = []
    print(f"\n[4] §14 round, the model shipped as a plan vs built by name, in-process, "
          f"{args.rounds} rounds (best of 2 alternating runs each)")
    plan_versus_named(plan_results, "in-process", lambda: run_in_process(
        "named", in_process_workers(seed_data), seed_config(args.rounds)),
        lambda: run_in_process("plan", in_process_workers(seed_data), plan_config(args.rounds)))

    if args.url:
        with tempfile.TemporaryDirectory() as logs:
            threads = thread_env(len(WORKERS), args.worker_threads or None).get(
                "OMP_NUM_THREADS", "as set by OMP_NUM_THREADS")
            print(f"\n[1+2 over RabbitMQ] one `fedmq worker` process per worker; torch threads "
                  f"per worker process: {threads}")
            with launched(args.url, logs, len(WORKERS), args.worker_threads) as launcher:
                started = time.perf_counter()
                for worker_id, labels in WORKERS.items():
                    launcher.start(worker_id, DATASET, labels)
                launcher.wait_consuming()
                print(f"  3 worker processes consuming after {time.perf_counter() - started:.1f} s")
                accuracy_runs.append(measure(
                    results, "s14", lambda: plain_rounds(**s14), lambda: run_over_amqp(
                        "rabbitmq", args.url, list(WORKERS), seed_config(args.rounds))))
                measure(results, "tiny", lambda: plain_rounds(**tiny), lambda: run_over_amqp(
                    "rabbitmq", args.url, list(WORKERS), tiny_config(args.tiny_rounds)))
                print(f"\n[4 over RabbitMQ] the model as a plan vs by name, {args.rounds} "
                      f"rounds")
                plan_versus_named(plan_results, "rabbitmq", lambda: run_over_amqp(
                    "named", args.url, list(WORKERS), seed_config(args.rounds)),
                    lambda: run_over_amqp("plan", args.url, list(WORKERS),
                                          plan_config(args.rounds)))
            ids = list(wide_data)
            per = -(-len(ids) // args.wide_processes)
            print(f"\n[3 over RabbitMQ] {len(ids)} ids in {args.wide_processes} processes")
            with launched(args.url, logs, args.wide_processes, args.worker_threads) as launcher:
                started = time.perf_counter()
                for p, first in enumerate(range(0, len(ids), per)):
                    launcher.start_group(f"group{p}", ids[first:first + per], DATASET,
                                         iid_parts=len(ids), first_part=first)
                launcher.wait_consuming()
                print(f"  {len(ids)} ids consuming after {time.perf_counter() - started:.1f} s")
                measure(results, "wide", lambda: plain_rounds(**wide), lambda: run_over_amqp(
                    "rabbitmq", args.url, ids, tiny_config(args.wide_rounds)))

    print("\n[accuracy] final global model of each §14 run on the MNIST 5k test set")
    plain = accuracy_runs[0]
    for run in accuracy_runs:
        diff = ("" if run is plain
                else f", max |w - w_plain| {max_diff(run.weights, plain.weights):.1e}")
        print(f"  {run.name:<12} {100 * accuracy('seed-cnn', run.weights):6.2f}%{diff}")
    summary(results)
    for _, label, ratio in plan_results:
        print(f"  acceptance (§14 round, model as a plan / by name <= 1.1, {label}): "
              f"{ratio:.3f} -> {'met' if ratio <= 1.1 else 'NOT met'}")
    if args.secure_aggregation:
        print()
        secure_main(args)


def secure_main(args: argparse.Namespace) -> None:
    """[5] secure aggregation against plain FedAvg on the same transport: `--secure-pairs`
    pairs of runs, FedAvg then the secure method, alternating (a shared machine drifts over
    minutes: a slow stretch then hits both kinds alike); per pair the difference (ratio for
    the §14 round) of the two runs' medians, and as the figure the median over the pairs;
    the acceptance figures of issue 16."""
    from fedmq import runtime
    runtime.tune_malloc()
    method = args.secure_aggregation
    seed_data, wide_data = partitions(), iid_parts(args.wide_workers)
    plain_rounds(seed_data, "seed-cnn", 3, 32, 10)  # warm-up
    pairs: list[tuple[str, list[tuple[Run, Run]]]] = []

    def pair(label: str, run) -> None:
        runs = []
        for _ in range(args.secure_pairs):
            base = run("fedavg", None)
            print(line(base))
            secure = run(method, method)
            print(line(secure, base))
            runs.append((base, secure))
        pairs.append((label, runs))

    print(f"[5] {method} against plain FedAvg; round 1 left out of medians; "
          f"{args.secure_pairs} alternating pairs of runs per part")
    print(f"  §14 round in-process, 3 workers, seed CNN, {args.rounds} rounds")
    pair("s14 in-process", lambda name, privacy: run_in_process(
        name, in_process_workers(seed_data), seed_config(args.rounds), privacy))
    print(f"  {args.wide_workers} workers in-process, mnist-logreg, {args.wide_rounds} rounds")
    pair("wide in-process", lambda name, privacy: run_in_process(
        name, in_process_workers(wide_data), tiny_config(args.wide_rounds), privacy))
    if args.url:
        with tempfile.TemporaryDirectory() as logs:
            with launched(args.url, logs, len(WORKERS), args.worker_threads) as launcher:
                for worker_id, labels in WORKERS.items():
                    launcher.start(worker_id, DATASET, labels)
                launcher.wait_consuming()
                print(f"  §14 round over RabbitMQ, 3 worker processes, {args.rounds} rounds")
                pair("s14 rabbitmq", lambda name, privacy: run_over_amqp(
                    name, args.url, list(WORKERS), seed_config(args.rounds), privacy))
            ids = list(wide_data)
            per = -(-len(ids) // args.wide_processes)
            with launched(args.url, logs, args.wide_processes, args.worker_threads) as launcher:
                for p, first in enumerate(range(0, len(ids), per)):
                    launcher.start_group(f"group{p}", ids[first:first + per], DATASET,
                                         iid_parts=len(ids), first_part=first)
                launcher.wait_consuming()
                print(f"  {len(ids)} workers over RabbitMQ in {args.wide_processes} processes, "
                      f"{args.wide_rounds} rounds")
                pair("wide rabbitmq", lambda name, privacy: run_over_amqp(
                    name, args.url, ids, tiny_config(args.wide_rounds), privacy))
    print(f"\n=== {method} vs FedAvg: median ms per round (per pair: FedAvg run, then "
          f"{method} run) ===")
    for label, runs in pairs:
        print(f"  {label:<16} " + "  ".join(f"{b.median * 1e3:.1f}/{s.median * 1e3:.1f}"
                                            for b, s in runs))
        diff = max(max_diff(s.weights, b.weights) for b, s in runs)
        if label.startswith("s14"):
            ratios = [s.median / b.median for b, s in runs]
            ratio = statistics.median(ratios)
            verdict = (f"ratio {ratio:.2f} (pairs {', '.join(f'{r:.2f}' for r in ratios)}; "
                       f"target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})")
        else:
            extra = [(s.median - b.median) / s.workers * 1e3 for b, s in runs]
            per_worker = statistics.median(extra)
            verdict = (f"+{per_worker:.2f} ms per worker (pairs "
                       f"{', '.join(f'{e:+.2f}' for e in extra)}; target <= 2: "
                       f"{'met' if per_worker <= 2 else 'NOT met'})")
        print(f"  {'':<16} {verdict}; max |w - w_fedavg| {diff:.1e}")


def summary(results: list[Result]) -> None:
    print("\n=== Summary: medians in ms per round; ratio = fedmq round / plain round measured "
          "just before it ===")
    print(f"  {'run':<17}{'fedmq':>8}{'plain':>8}{'ratio':>7}{'rounds/s':>9}{'fits sum':>10}"
          f"{'slowest':>9}{'overhead':>10}")
    for r in results:
        run = r.run
        print(f"  {r.section + ' ' + run.name:<17}{run.median * 1e3:8.1f}"
              f"{r.plain.median * 1e3:8.1f}{r.ratio:7.2f}{run.rounds_per_s:9.1f}"
              f"{run.median_of(run.compute) * 1e3:10.1f}"
              f"{run.median_of(run.slowest) * 1e3:9.1f}{run.overhead * 1e3:10.1f}")
    print("  fits sum: the workers' own training time (fit_seconds) added up; slowest: the "
          "slowest worker's;\n  overhead: round - slowest fit (serde, broker, coordinator, "
          "averaging). With worker processes the\n  workers train in parallel on the machine's "
          "cores (shared with other jobs); plain trains them one by one.")
    for r in results:
        if r.section == "s14" and r.run.name == "rabbitmq":
            print(f"  acceptance (§14 rabbitmq round / plain round <= 1.25): {r.ratio:.2f} -> "
                  f"{'met' if r.ratio <= 1.25 else 'NOT met'}; rabbitmq round / its slowest fit: "
                  f"{r.run.median / r.run.median_of(r.run.slowest):.2f}")
    print("\n=== Against the peers (measurements.md, same machine class; their §14 runs: 2 "
          "clients, Fashion-MNIST) ===")
    print(f"  Flower 1.42 simulation, 2 clients: {FLOWER_SIM_2_ROUND:.2f} s/round = "
          f"x{FLOWER_SIM_2_ROUND / PLAIN_2_ROUND:.1f} plain (round - plain ~100 ms); deployment: "
          f"{FLOWER_DEPLOY_ROUND} s/round = x{FLOWER_DEPLOY_ROUND / PLAIN_2_ROUND:.0f} plain;\n"
          f"  simulation, 50 clients: {FLOWER_SIM_50_ROUND} s/round vs plain {PLAIN_50_ROUND} s, "
          f"~10 ms per client per round; bare aio-pika RPC round trip {RABBIT_RPC_MS} ms. Ours:")
    for r in results:
        run = r.run
        extra = run.median - r.plain.median
        print(f"  {r.section + ' ' + run.name:<17} x{r.ratio:.2f} plain; round - plain "
              f"{extra * 1e3:7.1f} ms = {extra / run.workers * 1e3:6.2f} ms per worker; "
              f"round - slowest fit {run.overhead * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()

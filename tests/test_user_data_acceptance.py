"""Issue 14's acceptance: a model defined in a user's file (BatchNorm and Dropout, not in
fedmq.models) trains with `fedmq train --model file.py:Class` over RabbitMQ on workers serving
a user's own files, an ImageFolder tree (scikit-learn's digits, written as PNGs) and a CSV
(scikit-learn's breast-cancer table), to the accuracy the same algorithm reaches in plain
PyTorch (within 1 point); and every strategy completes 20 rounds of it with finite weights.

The plain-PyTorch reference is FedAvg (McMahan et al., 2017) written out with no fedmq: the
same partitions (read by the same `--data` loader), the same per-round worker seeds, batches,
dropout generator, learning-rate decay and sample-weighted averaging."""
from __future__ import annotations

import asyncio
import math
import pathlib
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

MODELS = textwrap.dedent("""
    import torch.nn as nn
    import torch.nn.functional as F


    class DigitsNet(nn.Module):
        input_shape = (1, 8, 8)

        def __init__(self, channels=16, p=0.2):
            super().__init__()
            self.conv = nn.Conv2d(1, channels, 3, padding=1)
            self.bn = nn.BatchNorm2d(channels)
            self.drop = nn.Dropout(p)
            self.fc = nn.Linear(channels * 4 * 4, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
            return F.log_softmax(self.fc(self.drop(x.flatten(1))), dim=1)


    class TableNet(nn.Module):
        input_shape = (30,)

        def __init__(self, hidden=32, p=0.2):
            super().__init__()
            self.fc1 = nn.Linear(30, hidden)
            self.bn = nn.BatchNorm1d(hidden)
            self.drop = nn.Dropout(p)
            self.fc2 = nn.Linear(hidden, 2)

        def forward(self, x):
            return F.log_softmax(self.fc2(self.drop(F.relu(self.bn(self.fc1(x))))), dim=1)
""")
TRAIN = ("ua-alice", "ua-bob", "ua-carol")
TESTING = "ua-testing"
ROUNDS = 20


def _write_digits(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """scikit-learn's 1 797 digits (8x8, 16 grey levels) as PNG ImageFolder trees: three
    owners' shares (shuffled, 25% each) and a test tree (the last 25%)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    parts = np.array_split(order, 4)
    dirs = {}
    for name, idx in zip([*TRAIN, TESTING], parts):
        d = root / "digits" / name
        for i in idx:
            label_dir = d / str(int(digits.target[i]))
            label_dir.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(label_dir / f"{i}.png")
        dirs[name] = d
    return dirs


def _write_table(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """scikit-learn's breast-cancer table (569 x 30), standardised by its owners beforehand,
    as one CSV per owner with a `diagnosis` column; the last 25% is the test file."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    table = load_breast_cancer(as_frame=True).frame
    features = table.columns[:-1]
    table[features] = (table[features] - table[features].mean()) / table[features].std()
    table = table.rename(columns={"target": "diagnosis"}).sample(frac=1.0, random_state=0)
    files = {}
    for name, part in zip([*TRAIN, TESTING], np.array_split(np.arange(len(table)), 4)):
        path = root / f"{name}.csv"
        pd.DataFrame(table.iloc[part]).to_csv(path, index=False)
        files[name] = path
    return files


def _data_args(worker: str, digits: dict, table: dict) -> list[str]:
    split = "test" if worker == TESTING else "train"
    return ["--data", str(digits[worker]), "--key", "digits", "--split", split,
            "--transform", "grayscale",
            "--data", str(table[worker]), "--key", "cancer", "--target", "diagnosis",
            "--split", split]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from worker_procs import WorkerProcesses
    root = tmp_path_factory.mktemp("userdata")
    (root / "models.py").write_text(MODELS)
    digits, table = _write_digits(root), _write_table(root)
    procs = WorkerProcesses(root)
    try:
        for worker in [*TRAIN, TESTING]:
            procs.start(worker, *_data_args(worker, digits, table), wait=False)
        for worker, proc in procs.procs.items():
            procs.wait_consuming(worker, proc, timeout=120)
        yield root, digits, table
    finally:
        procs.stop_all(delete_queues=True)


def _held(worker: str, digits: dict, table: dict, key: str) -> tuple:
    """What the worker service holds for `key`: read with the same `--data` loader."""
    from fedmq.cli import build_parser
    from fedmq.service import build_worker
    args = build_parser().parse_args(["worker", "--id", worker,
                                      *_data_args(worker, digits, table)])
    held = build_worker(args)
    split = "#test" if worker == TESTING else "#train"
    x = held.store.search([f"#{key}", "#data", split])[0][1].obj
    y = held.store.search([f"#{key}", "#target", split])[0][1].obj
    return x, y


def _config(root, cls: str, dataset: str, rounds: int = ROUNDS):
    from fedmq.fl.config import TrainConfig
    return TrainConfig(rounds=rounds, model=f"{root / 'models.py'}:{cls}", dataset=dataset,
                       batch_size=32, num_batches=8, lr=0.1, eval_every=rounds,
                       evaluate_updates=False, round_timeout=120, seed=7,
                       buckets=[(0, 4), (5, 9)])


async def _run(config, strategy_name: str = "fedavg"):
    from fedmq.fl.async_coordinator import AsyncCoordinator
    from fedmq.fl.connections import AMQPRoundConnection
    from fedmq.fl.coordinator import Coordinator
    from fedmq.strategy.asynchronous import AsyncStrategy
    from fedmq.strategy.registry import make_strategy
    from worker_procs import AMQP_URL
    strategy = make_strategy(strategy_name)
    conn = await AMQPRoundConnection.connect(AMQP_URL)
    try:
        if isinstance(strategy, AsyncStrategy):
            coord = AsyncCoordinator(conn, list(TRAIN), config, testing=TESTING,
                                     strategy=strategy, max_updates=ROUNDS * len(TRAIN),
                                     echo=lambda line: None)
        else:
            coord = Coordinator(conn, list(TRAIN), config, testing=TESTING, strategy=strategy,
                                echo=lambda line: None)
        history = await coord.run()
        return history, coord.weights
    finally:
        await conn.aclose()


def _plain_fedavg(module_cls, data: dict, test: tuple, config) -> float:
    """FedAvg in plain PyTorch, the batches and draws of fedmq.fl.training.fit."""
    from fedmq.fl.coordinator import worker_seed
    from fedmq.fl.training import batch_indices
    torch.manual_seed(config.seed)
    global_model = module_cls()
    weights = {k: v.detach().clone() for k, v in global_model.state_dict().items()}
    lr = config.lr
    for rnd in range(1, config.rounds + 1):
        results = []
        for worker in TRAIN:
            x, y = data[worker]
            model = module_cls()
            model.load_state_dict(weights)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            seed = worker_seed(config.seed, rnd, worker)
            gen = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed + 1)  # the dropout masks: a generator seeded seed + 1
            seen = 0
            for idx in batch_indices(len(x), config.batch_size, config.num_batches, gen):
                opt.zero_grad()
                F.nll_loss(model(x[idx]), y[idx]).backward()
                opt.step()
                seen += len(idx)
            results.append(({k: v.detach() for k, v in model.state_dict().items()}, seen))
        total = sum(n for _, n in results)
        new = {}
        for name, value in weights.items():
            if value.is_floating_point():
                acc = sum(w[name].double() * n for w, n in results) / total
                new[name] = acc.to(value.dtype)
            else:
                new[name] = torch.stack([w[name] for w, _ in results]).max(0).values
        weights = new
        lr = max(lr * config.lr_decay, config.lr * config.lr_floor)
    global_model.load_state_dict(weights)
    global_model.eval()
    with torch.no_grad():
        x, y = test
        return float((global_model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("cls,key", [("DigitsNet", "digits"), ("TableNet", "cancer")])
def test_a_users_model_on_a_users_files_matches_plain_pytorch(world, cls, key):
    from fedmq.fl import user_model
    root, digits, table = world
    config = _config(root, cls, key)
    history, _ = asyncio.run(_run(config))
    assert [r.status for r in history] == ["ok"] * ROUNDS, [r.failed for r in history]
    fedmq_accuracy = history[-1].accuracy
    module_cls = user_model.load_class(f"{root / 'models.py'}:{cls}")
    data = {w: _held(w, digits, table, key) for w in TRAIN}
    plain_accuracy = _plain_fedavg(module_cls, data, _held(TESTING, digits, table, key),
                                   config)
    print(f"{cls}: fedmq {100 * fedmq_accuracy:.2f}%, plain PyTorch {100 * plain_accuracy:.2f}%")
    assert abs(fedmq_accuracy - plain_accuracy) <= 0.01, (fedmq_accuracy, plain_accuracy)
    assert fedmq_accuracy > (0.85 if key == "digits" else 0.9)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad",
                                      "fedavgm", "fedmedian", "fedtrimmedavg", "krum",
                                      "fedasync", "fedbuff"])
def test_every_strategy_completes_20_rounds_with_finite_weights(world, strategy):
    from fedmq.strategy.registry import STRATEGIES
    assert strategy in STRATEGIES
    root, _, _ = world
    history, weights = asyncio.run(_run(_config(root, "DigitsNet", "digits"), strategy))
    assert len(history) >= ROUNDS if strategy not in ("fedasync", "fedbuff") else history
    assert all(getattr(r, "status", "ok") == "ok" for r in history)
    assert all(torch.isfinite(t.double()).all() for t in weights.values())
    assert weights["bn.num_batches_tracked"].dtype == torch.int64
    final = [r.accuracy for r in history if r.accuracy is not None][-1]
    assert not math.isnan(final) and final > 0.2, (strategy, final)


def test_fedmq_train_with_the_users_model_file_over_rabbitmq(world, tmp_path):
    """The command a user types: `fedmq train --url ... --model models.py:DigitsNet` against
    the worker services serving the user's image folders; the same final accuracy as the
    plain-PyTorch FedAvg of the same algorithm (within 1 point)."""
    import re
    import subprocess
    import sys
    from fedmq.fl import user_model
    from worker_procs import AMQP_URL
    root, digits, table = world
    done = subprocess.run(
        [sys.executable, "-m", "fedmq.cli", "train", "--url", AMQP_URL,
         "--model", f"{root / 'models.py'}:DigitsNet", "--dataset", "digits",
         "--workers", ",".join(TRAIN), "--testing", TESTING, "--rounds", str(ROUNDS),
         "--batches", "8", "--eval-every", str(ROUNDS), "--seed", "7", "--buckets", "0-4,5-9",
         "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model plan sha256:" in done.stdout
    final = float(re.search(r"Final accuracy: ([0-9.]+)%", done.stdout).group(1)) / 100
    module_cls = user_model.load_class(f"{root / 'models.py'}:DigitsNet")
    data = {w: _held(w, digits, table, "digits") for w in TRAIN}
    plain = _plain_fedavg(module_cls, data, _held(TESTING, digits, table, "digits"),
                          _config(root, "DigitsNet", "digits"))
    assert abs(final - plain) <= 0.01, (final, plain)

"""The seed's §5 (sandbox, search, grid) and §7 (federated dataset on Boston) listings, run
with only the import line changed (plus the §7 fixes in tests/seed/README.md).

The sandbox builds its own six in-process workers, so these listings run in-process only
(`worker_factory` stays None); tests/test_federated_data.py has the RabbitMQ variants.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch

from fedmq import PointerTensor

from listings import POINTER_RE, run_listing

SANDBOX_LINES = """Setting up Sandbox...
    - Hooking PyTorch
    - Creating Virtual Workers:
        - bob
        - theo
        - jason
        - alice
        - andy
        - jon
    Storing hook and workers as global variables...
    Loading datasets from SciKit Learn...
        - Boston Housing Dataset
        - Diabetes Dataset
        - Breast Cancer Dataset
    - Digits Dataset
        - Iris Dataset
        - Wine Dataset
        - Linnerud Dataset
    Distributing Datasets Amongst Workers...
    Collecting workers into a VirtualGrid...
Done!""".splitlines()
WORKERS = ["bob", "theo", "jason", "alice", "andy", "jon"]
BOSTON_TAGS = {"#boston_housing", "..", "#data", "#housing", "#boston", "_boston_dataset:"}


def test_s5_0_sandbox_prints_the_seed_lines_and_defines_globals():
    out, ns = run_listing("s5_0_create_sandbox.py")
    assert out.splitlines() == SANDBOX_LINES
    assert [w.id for w in ns["workers"]] == WORKERS
    assert all(ns[w] is worker for w, worker in zip(WORKERS, ns["workers"]))
    assert ns["hook"].local_worker.id == "me"
    assert [w.id for w in ns["grid"].workers] == WORKERS
    # 7 datasets x (data, target) on every worker
    assert all(w.objects_count() == 14 for w in ns["workers"])


def test_s5_1_search_finds_tagged_data_and_prints_like_the_seed():
    out, ns = run_listing("s5_1_search.py")
    results = ns["results"]
    # bob's share of Boston (data and target) plus x and y; z (#mnist) is not a match
    assert len(results) == 4
    assert all(r.location is ns["bob"] for r in results)
    assert all(not r.garbage_collect_data for r in results)  # found pointers do not own
    tags = [r.tags for r in results]
    assert tags[0] == BOSTON_TAGS
    assert tags[1] == BOSTON_TAGS - {"#data"} | {"#target"}
    assert tags[2] == tags[3] == {"#boston", "#fun", "#housing"}
    assert [tuple(r.shape) for r in results] == [(84, 13), (84,), (5,), (5,)]

    printed = out.split(SANDBOX_LINES[-1], 1)[1]
    # the list prints each pointer as in the seed: pointer line, Tags, Description, Shape
    # (the next pointer follows the Shape line after ", ")
    blocks = re.findall(r"(\(Wrapper\)>\[PointerTensor [^\]]*\])\n\tTags: (.*)\n"
                        r"\tDescription: (.*)\n\tShape: (torch.Size\(\[[\d, ]*\]\))", printed)
    assert len(blocks) == 4
    assert all(POINTER_RE.fullmatch(b[0]) for b in blocks)
    assert [b[1] for b in blocks] == [" ".join(sorted(t)) + " " for t in tags]
    assert [b[2] for b in blocks] == [".. _boston_dataset:..."] * 2 + [
        "The input datapoints to the boston housing dataset...."] * 2
    assert [b[3] for b in blocks] == ["torch.Size([84, 13])", "torch.Size([84])",
                                      "torch.Size([5])", "torch.Size([5])"]
    # print(results[0].description): the whole DESCR text
    description = printed.split("Shape: torch.Size([5])]", 1)[1].strip()
    assert description.startswith(".. _boston_dataset:\n\nBoston house prices dataset")
    assert ":Number of Instances: 506" in description and "- LSTAT" in description
    assert description == results[0].description.strip()
    # dropping the found pointers deletes nothing on bob
    before = ns["bob"].objects_count()
    del ns["results"], results
    assert ns["bob"].objects_count() == before


def test_s5_2_grid_search_returns_pointers_per_worker():
    out, ns = run_listing("s5_2_grid.py")
    results, data, target = ns["results"], ns["boston_data"], ns["boston_target"]
    assert list(results) == list(data) == list(target) == WORKERS
    assert all(len(v) == 2 for v in results.values())  # data and target
    assert all(len(v) == 1 for v in data.values())
    rows = [tuple(v[0].shape) for v in data.values()]
    assert rows == [(84, 13)] * 5 + [(86, 13)]  # int(506/6) each, the last the remainder
    assert [tuple(v[0].shape) for v in target.values()] == [(84,)] * 5 + [(86,)]
    assert all("#target" in v[0].tags and "#boston" in v[0].tags for v in target.values())
    # the three printed dicts list the workers and their pointers
    lines = out.split(SANDBOX_LINES[-1], 1)[1]
    assert lines.count("'bob': [(Wrapper)>[PointerTensor | me:") == 3
    assert lines.count("Shape: torch.Size([86, 13])") == 2  # in results and in boston_data
    # no hits: the worker is left out
    assert ns["grid"].search("#nothing-has-this") == {}


def _boston_shards() -> list[tuple[torch.Tensor, torch.Tensor]]:
    from mlxtend.data import boston_housing_data

    X, y = boston_housing_data()
    X, y = torch.tensor(X).float(), torch.tensor(y).float()
    bounds = [0, 84, 168, 252, 336, 420, 506]
    return [(X[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:])]


def _plain_s7(state: torch.Tensor, epochs: int) -> tuple[torch.nn.Linear, list[float]]:
    """§7's loop in plain PyTorch: same initial weights, same batches, one Adam per worker."""
    torch.set_rng_state(state)
    model = torch.nn.Linear(13, 1)
    shards = _boston_shards()
    optimizers = [torch.optim.Adam(model.parameters(), lr=1e-2) for _ in shards]
    totals = []
    for _ in range(epochs):
        total = 0.0
        for (X, y), opt in zip(shards, optimizers):
            for start in range(0, len(X), 32):
                opt.zero_grad()
                loss = ((model(X[start:start + 32]).view(-1) - y[start:start + 32]) ** 2).mean()
                loss.backward()
                opt.step()
                total += float(loss)
        totals.append(total)
    return model, totals


def test_s7_federated_dataset_training_matches_plain_torch():
    torch.manual_seed(11)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # float(loss) of a requires_grad tensor
        out, ns = run_listing("s7_federated_dataset.py")
    lines = out.splitlines()
    assert lines[:3] == ["Setting up Sandbox...", "Done!", str(WORKERS)]  # verbose=False
    assert ns["n_features"] == 13
    loader = ns["train_loader"]
    # 6 workers x ceil(84/32) batches: len() is the number of batches the loop sees
    assert len(loader) == 18
    assert ns["batch_idx"] == 17
    progress = [line for line in lines if line.startswith("Train Epoch:")]
    assert len(progress) == 50 * 3  # batch 0, 8 and 16 of each epoch
    assert progress[0].startswith("Train Epoch: 1 [0/18 (0%)]\tBatch loss: ")
    totals = [float(line.split()[-1]) for line in lines if line.startswith("Total loss")]
    assert len(totals) == 50
    assert totals[-1] < totals[0] / 10 and totals[-1] < totals[25]  # losses go down
    plain, plain_totals = _plain_s7(state, 50)
    model = ns["model"]
    assert torch.allclose(model.weight, plain.weight, atol=1e-4)
    assert torch.allclose(model.bias, plain.bias, atol=1e-4)
    assert totals == pytest.approx(plain_totals, rel=1e-4)
    # each worker's Adam moments stayed on that worker, as pointers; the data never moved
    for w in WORKERS:
        opt = ns["optimizers"][w]
        moments = [t for s in opt.state.values() for k, t in s.items() if k != "step"]
        assert len(moments) == 4  # exp_avg and exp_avg_sq of weight and bias
        assert all(isinstance(t, PointerTensor) and t.location.id == w for t in moments)

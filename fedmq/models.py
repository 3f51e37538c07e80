"""Models fedmq knows by name (so a worker can build one without receiving code)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class SeedCNN(nn.Module):
    """The CNN of the seed's §6 and §14 (PyTorch's MNIST example): 28x28 grey images, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class MNISTLogReg(nn.Module):
    """Multinomial logistic regression on 28x28 grey images (7 850 parameters): a model so
    small that a round's time is the framework's own overhead (benchmarks/rounds.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return F.log_softmax(self.fc(x.flatten(1)), dim=1)


MODELS = {"seed-cnn": SeedCNN, "mnist-logreg": MNISTLogReg}

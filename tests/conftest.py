import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/listings.py and friends

import fedmq  # noqa: E402


@pytest.fixture
def hook():
    return fedmq.TorchHook(torch)


@pytest.fixture
def bob(hook):
    return fedmq.VirtualWorker(hook, id="bob")


@pytest.fixture
def alice(hook):
    return fedmq.VirtualWorker(hook, id="alice")

"""Adds `federate(workers)` to every `torch.utils.data.Dataset` (imported by TorchHook)."""
from fedmq.federated.dataset import dataset_federate
from fedmq.hook import register_dataset_method

register_dataset_method("federate", dataset_federate)

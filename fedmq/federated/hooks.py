"""The federated-data extension: `federate(workers)` on every `torch.utils.data.Dataset`."""
from fedmq.extensions import Extension
from fedmq.federated.dataset import dataset_federate

EXTENSION = Extension("federated", dataset_methods={"federate": dataset_federate})

"""Pointers: local handles to remote objects (tensor.py), the dispatch that turns torch calls
on them into Commands (dispatch.py; result shapes come from fedmq.shapes), and sent models'
parameters (parameter.py)."""
from fedmq.pointers.parameter import RemoteBuffer, RemoteParameter
from fedmq.pointers.tensor import PointerTensor

__all__ = ["PointerTensor", "RemoteBuffer", "RemoteParameter"]

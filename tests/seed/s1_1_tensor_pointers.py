import sys

import torch
from torch.nn import Parameter
import torch.nn as nn

import fedmq as sy
hook = sy.TorchHook(torch)

bob = sy.VirtualWorker(hook, id="bob")

x = torch.tensor([1,2,3,4,5])
y = torch.tensor([1,1,1,1,1])

x_ptr = x.send(bob)
y_ptr = y.send(bob)

print(x_ptr)
print(bob._objects)

x_ptr.get()
y_ptr.get()
print(bob._objects)

import torch
import fedmq as sy

hook = sy.TorchHook(torch)

bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')

p2p2x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
print(bob._objects)
print(alice._objects)

y = torch.add(p2p2x, p2p2x)
print(y.get().get())
print(bob._objects)
print(alice._objects)

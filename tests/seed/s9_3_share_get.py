import torch
import fedmq as sy

hook = sy.TorchHook(torch)
bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')
bill = sy.VirtualWorker(hook, id='bill')

x = torch.tensor([25])
encrypted_x = x.share(bob, alice, bill)
print(encrypted_x)
print(encrypted_x.get())

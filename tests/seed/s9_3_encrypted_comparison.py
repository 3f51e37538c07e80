import torch
import fedmq as sy

hook = sy.TorchHook(torch)
bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')
crypto_provider = sy.VirtualWorker(hook, id='crypto_provider')

x = torch.tensor([25]).share(bob,alice, crypto_provider=crypto_provider)
y = torch.tensor([5]).share(bob,alice, crypto_provider=crypto_provider)

z = x > y
print(z.get())
z = x < y
print(z.get())
z = x == y
print(z.get())

x = torch.tensor([2, 3, 4, 1]).share(bob,alice, crypto_provider=crypto_provider)
print(x.max().get())

x = torch.tensor([[2, 3], [4, 1]]).share(bob,alice, crypto_provider=crypto_provider)
max_values, max_ids = x.max(dim=0)
print(max_values.get())

import torch
import fedmq as sy

hook = sy.TorchHook(torch)

bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')
bill = sy.VirtualWorker(hook, id='bill')

print(bob._objects)

x = torch.tensor([25]).share(bob, alice, bill)
print(bob._objects)

bobs_share = list(bob._objects.values())[0]
print(bobs_share)
alices_share = list(alice._objects.values())[0]
bills_share = list(bill._objects.values())[0]

Q = x.child.field

print((bobs_share + alices_share + bills_share) % Q)

import torch
import fedmq as sy

hook = sy.TorchHook(torch)

bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')

x = torch.tensor([1, 2, 3, 4]).send(bob)
print('bob:{}'.format(bob._objects))
print('alice:{}'.format(alice._objects))

x = x.move(alice)

print('bob:{}'.format(bob._objects))
print('alice:{}'.format(alice._objects))
print(x)

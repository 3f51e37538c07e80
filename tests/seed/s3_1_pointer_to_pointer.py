import torch
import fedmq as sy

hook = sy.TorchHook(torch)

bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')

x = torch.tensor([1, 2, 3, 4]) # 本地张量
x_ptr = x.send(bob) # 将本地张量发给bob,并返回张量指针

pointer_to_x_ptr = x_ptr.send(alice) # 将指针发给alice,返回指针的指针

print(pointer_to_x_ptr)
print(bob._objects)
print(alice._objects)

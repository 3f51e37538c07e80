import torch
import fedmq as sy
hook = sy.TorchHook(torch)
bob = sy.VirtualWorker(hook, id="bob")

x = torch.tensor([1,2,3,4,5]).send(bob)
y = torch.tensor([1,1,1,1,1]).send(bob)
z = x + y
print(z)

z.get()

z = torch.add(x, y)
print(z)

z_local = z.get()
print(z_local)

# x和y必须是float类型数据,因为只有该类型数据才能够进行梯度下降
x = torch.tensor([1,2,3,4,5.], requires_grad=True).send(bob)
y = torch.tensor([1,1,1,1,1.], requires_grad=True).send(bob)

z = torch.add(x, y).sum() # 类似于损失函数
z.backward() # 反向传播

x_local = x.get()
print(x_local)
print(x_local.grad)

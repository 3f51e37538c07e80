import torch
import torch.nn as nn
import torch.optim as optim

import fedmq as sy

hook = sy.TorchHook(torch)

# 创建一对虚拟工作机
bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')

# 一个数据集以及对应的标签
data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.]], requires_grad=True)
target = torch.tensor([[0], [0], [1], [1.]], requires_grad=True)

# 通过以下方式获取每个工作机的训练数据的指针
# 向bob和alice发送一些训练数据
data_bob = data[0: 2]
target_bob = target[0: 2]

data_alice = data[2:]
target_alice = target[2:]

# 初始化模型
model = nn.Linear(2, 1)

# 获取数据指针和标签指针
data_bob = data_bob.send(bob)
data_alice = data_alice.send(alice)

target_bob = target_bob.send(bob)
target_alice = target_alice.send(alice)

# 将指针组织到列表中
datasets = [(data_bob, target_bob), (data_alice, target_alice)] # 相当于拥有两份数据集了

def train():
    opt = optim.SGD(params=model.parameters(), lr=0.1)
    for iter in range(10):
        # 1) 遍历每个工作机的数据集
        for data, target in datasets:
            # 2) 将模型发送给对应的工作机
            model.send(data.location)   # data.location返回其所在的工作机id

            # 3) 消除之前的梯度(如果存在)
            opt.zero_grad()

            # 4) 预测
            pred = model(data)

            # 5) 计算损失
            loss = ((pred - target)**2).sum()

            # 6) 指出那些导致损失的参数(损失回传)
            loss.backward()

            # 7) 更新参数
            opt.step()

            # 8) 获取模型(带梯度):将工作机上的model返还至主机上
            model.get()

            # 6) 打印进程:此时loss为张量指针,所以要先返还到本机上再打印
            print(loss.get().data)

if __name__ == "__main__":
    train()

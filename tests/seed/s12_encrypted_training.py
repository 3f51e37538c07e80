import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import fedmq as sy

# 设置好所需
hook = sy.TorchHook(torch)

alice = sy.VirtualWorker(id="alice", hook=hook)
bob = sy.VirtualWorker(id="bob", hook=hook)
james = sy.VirtualWorker(id="james", hook=hook)

# 一个数据集
data = torch.tensor([[0,0],[0,1],[1,0],[1,1.]])
target = torch.tensor([[0],[0],[1],[1.]])

# 一个模型
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 1)
        with torch.no_grad():
            self.fc1.weight.set_(torch.tensor([[ 0.0738, -0.2109],[-0.1579,  0.3174]], requires_grad=True))
            self.fc1.bias.set_(torch.tensor([0.,0.1], requires_grad=True))
            self.fc2.weight.set_(torch.tensor([[-0.5368,  0.7050]], requires_grad=True))
            self.fc2.bias.set_(torch.tensor([-0.0343], requires_grad=True))

    def forward(self, x):
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        return x
model = Net()

# We encode everything
data = data.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
target = target.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
model = model.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)

opt = optim.SGD(params=model.parameters(), lr=0.1).fix_precision()

for iter in range(20):
    opt.zero_grad()
    pred = model(data)
    loss = ((pred - target) ** 2).sum()
    loss.backward()
    opt.step()
    print(loss.get().float_precision()) # 解密并转换精度

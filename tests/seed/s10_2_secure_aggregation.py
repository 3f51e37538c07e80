import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import TensorDataset, DataLoader

class Parser:
    """Parameters for training"""
    def __init__(self):
        self.epochs = 10
        self.lr = 0.001
        self.test_batch_size = 8
        self.batch_size = 8
        self.log_interval = 10
        self.seed = 1
    
args = Parser()

torch.manual_seed(args.seed)
kwargs = {}

# data: the seed unpickles ../data/BostonHousing/boston_housing.pickle (Keras's split of Boston
# housing); here the same table comes from mlxtend, split as Keras splits it (seed 113, 20% test)
import numpy as np
from mlxtend.data import boston_housing_data
X_all, y_all = boston_housing_data()
indices = np.arange(len(X_all))
np.random.RandomState(113).shuffle(indices)
split = int(len(X_all) * (1 - 0.2))
((X, y), (X_test, y_test)) = ((X_all[indices[:split]], y_all[indices[:split]]),
                              (X_all[indices[split:]], y_all[indices[split:]]))

X = torch.from_numpy(X).float()    # 将numpy数组转化为tensor向量
y = torch.from_numpy(y).float()
X_test = torch.from_numpy(X_test).float()
y_test = torch.from_numpy(y_test).float()
# preprocessing
mean = X.mean(0, keepdim=True)
dev = X.std(0, keepdim=True)
mean[:, 3] = 0. # the feature at column 3 is binary,
dev[:, 3] = 1.  # so we don't standardize it
X = (X - mean) / dev
X_test = (X_test - mean) / dev
train = TensorDataset(X, y)
test = TensorDataset(X_test, y_test)
train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, **kwargs)
test_loader = DataLoader(test, batch_size=args.test_batch_size, shuffle=True, **kwargs)

class Net(nn.Module):    # 这里继承的是nn.Module
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(13, 32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 1)

    def forward(self, x):
        x = x.view(-1, 13)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x

model = Net()
optimizer = optim.SGD(model.parameters(), lr=args.lr)

import fedmq as sy

hook = sy.TorchHook(torch)
bob = sy.VirtualWorker(hook, id="bob")
alice = sy.VirtualWorker(hook, id="alice")
james = sy.VirtualWorker(hook, id="james")

compute_nodes = [bob, alice]

# 10.2
remote_dataset = (list(),list())

train_distributed_dataset = []

for batch_idx, (data,target) in enumerate(train_loader):
    data = data.send(compute_nodes[batch_idx % len(compute_nodes)])
    target = target.send(compute_nodes[batch_idx % len(compute_nodes)])
    remote_dataset[batch_idx % len(compute_nodes)].append((data, target))

def update(data, target, model, optimizer):
    model.send(data.location)
    optimizer.zero_grad()
    pred = model(data)
    loss = F.mse_loss(pred.view(-1), target)
    loss.backward()
    optimizer.step()
    return model

bobs_model = Net()
alices_model = Net()

bobs_optimizer = optim.SGD(bobs_model.parameters(), lr=args.lr)
alices_optimizer = optim.SGD(alices_model.parameters(), lr=args.lr)

models = [bobs_model, alices_model]
params = [list(bobs_model.parameters()), list(alices_model.parameters())]
optimizers = [bobs_optimizer, alices_optimizer]

# A:训练
# 选择训练哪个batch
data_index = 0
# 更新远程模型
# 我们可以在进行此操作之前对其进行多次迭代,但是在这里每个工作机只进行一次迭代
for remote_index in range(len(compute_nodes)):
    data, target = remote_dataset[remote_index][data_index]
    models[remote_index] = update(data, target, models[remote_index], optimizers[remote_index])

# B:加密聚合
# 创建一个列表,我们将在其中存储我们的加密模型平均值
new_params = list()

# 遍历每个参数
for param_i in range(len(params[0])):

    # 对每个工作机
    spdz_params = list()
    for remote_index in range(len(compute_nodes)):
        
        # 从每个工作机中选择相同的参数并复制
        copy_of_parameter = params[remote_index][param_i].copy()
        
        
        # 由于SMPC只能使用整数(不能使用浮点数)
        # 因此我们需要使用Integers存储十进制信息。
        # 换句话说,我们需要使用“固定精度”编码。
        fixed_precision_param = copy_of_parameter.fix_precision()
        
        # 现在我们在远程计算机上对其进行加密。
        # 注意,fixed_precision_param“已经”是一个指针。
        # 因此,当我们调用share时,它实际上是对指向的数据进行加密。
        # 而它会返回一个指向MPC秘密共享对象的指针,也就是我们需要的共享分片。
        
        encrypted_param = fixed_precision_param.share(bob, alice, crypto_provider=james)
        
        # 现在我们获取指向MPC共享值的指针
        param = encrypted_param.get()
        
        # 保存参数,以便我们可以使用工作机的相同参数取平均值
        spdz_params.append(param)

    # 来自多个工作人员的平均参数,将它们提取到本地计算机上
    # 以固定精度解密和解码,再返回一个浮点数
    new_param = (spdz_params[0] + spdz_params[1]).get().float_precision()/2
    
    # 保存新的平均参数
    new_params.append(new_param)

# C:清理
with torch.no_grad():
    for model in params:
        for param in model:
            param *= 0

    for model in models:
        model.get()

    for remote_index in range(len(compute_nodes)):
        for param_index in range(len(params[remote_index])):
            params[remote_index][param_index].set_(new_params[param_index])

# 把以上代码放在一起
def train(epoch):
    for data_index in range(len(remote_dataset[0])-1):
        # update remote models
        for remote_index in range(len(compute_nodes)):
            data, target = remote_dataset[remote_index][data_index]
            models[remote_index] = update(data, target, models[remote_index], optimizers[remote_index])

        # encrypted aggregation
        new_params = list()
        for param_i in range(len(params[0])):
            spdz_params = list()
            for remote_index in range(len(compute_nodes)):
                spdz_params.append(params[remote_index][param_i].copy().fix_precision().share(bob, alice, crypto_provider=james).get())

            new_param = (spdz_params[0] + spdz_params[1]).get().float_precision()/2
            new_params.append(new_param)

        # cleanup
        with torch.no_grad():
            for model in params:
                for param in model:
                    param *= 0

            for model in models:
                model.get()

            for remote_index in range(len(compute_nodes)):
                for param_index in range(len(params[remote_index])):
                    params[remote_index][param_index].set_(new_params[param_index])

def test():
    models[0].eval()
    test_loss = 0
    for data, target in test_loader:
        output = models[0](data)
        test_loss += F.mse_loss(output.view(-1), target, reduction='sum').item() # sum up batch loss
        pred = output.data.max(1, keepdim=True)[1] # get the index of the max log-probability
        
    test_loss /= len(test_loader.dataset)
    print('Test set: Average loss: {:.4f}\n'.format(test_loss))

import time
t = time.time()

for epoch in range(args.epochs):
    print(f"Epoch {epoch + 1}")
    train(epoch)
    test()

    
total_time = time.time() - t
print('Total', round(total_time, 2), 's')

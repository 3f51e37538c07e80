import torch
import fedmq as sy
sy.create_sandbox(globals(), verbose=False)

grid = sy.PrivateGridNetwork(*workers)
boston_data = grid.search("#boston", "#data")
boston_target = grid.search("#boston", "#target")

n_features = boston_data['alice'][0].shape[1]
n_targets = 1

model = torch.nn.Linear(n_features, n_targets)

datasets = []
for worker in boston_data.keys():
    dataset = sy.BaseDataset(boston_data[worker][0], boston_target[worker][0])
    datasets.append(dataset)

# 建立FedratedDataset对象
dataset = sy.FederatedDataset(datasets)
print(dataset.workers)

# 加载优化器,注意是个字典
optimizers = {}
for worker in dataset.workers:
    optimizers[worker] = torch.optim.Adam(params=model.parameters(), lr=1e-2)

train_loader = sy.FederatedDataLoader(dataset, batch_size=32, shuffle=False, drop_last=False)

epochs = 50
for epoch in range(1, epochs + 1):
    loss_accum = 0
    for batch_idx, (data, target) in enumerate(train_loader):
        model.send(data.location)
        
        optimizer = optimizers[data.location.id]
        optimizer.zero_grad()
        pred = model(data)
        loss = ((pred.view(-1) - target)**2).mean()
        loss.backward()
        optimizer.step()
        
        model.get()
        loss = loss.get()
        
        loss_accum += float(loss)
        
        if batch_idx % 8 == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tBatch loss: {:.6f}'.format(
                epoch, batch_idx, len(train_loader),
                       100. * batch_idx / len(train_loader), loss.item()))                        
    print('Total loss', loss_accum)

"""Seed §7: linear regression on Boston housing split over the sandbox's six workers, with a
FederatedDataset, a FederatedDataLoader and one Adam optimizer per worker.

The data never leaves the workers: the model goes to each batch's worker, takes a step with
that worker's optimizer (whose state stays on that worker) and comes back.
Run: python examples/seed_s7_boston_federated.py [--epochs 50]
"""
import argparse

import torch

import fedmq as sy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)

    ns: dict = {}
    sy.create_sandbox(ns, verbose=False)
    grid = ns["grid"]
    boston_data = grid.search("#boston", "#data")
    boston_target = grid.search("#boston", "#target")

    n_features = boston_data["alice"][0].shape[1]
    torch.manual_seed(0)
    model = torch.nn.Linear(n_features, 1)

    dataset = sy.FederatedDataset([sy.BaseDataset(boston_data[w][0], boston_target[w][0])
                                   for w in boston_data])
    print(dataset)
    optimizers = {w: torch.optim.Adam(params=model.parameters(), lr=args.lr)
                  for w in dataset.workers}
    train_loader = sy.FederatedDataLoader(dataset, batch_size=32, shuffle=False,
                                          drop_last=False)

    for epoch in range(1, args.epochs + 1):
        loss_accum = 0.0
        for batch_idx, (data, target) in enumerate(train_loader):
            model.send(data.location)
            optimizer = optimizers[data.location.id]
            optimizer.zero_grad()
            pred = model(data)
            loss = ((pred.view(-1) - target) ** 2).mean()
            loss.backward()
            optimizer.step()
            model.get()
            loss = loss.get().detach()
            loss_accum += float(loss)
            if batch_idx % 8 == 0 and (epoch == 1 or epoch % 10 == 0):
                print(f"Train Epoch: {epoch} [{batch_idx}/{len(train_loader)} "
                      f"({100. * batch_idx / len(train_loader):.0f}%)]\tBatch loss: "
                      f"{loss.item():.6f}")
        if epoch == 1 or epoch % 10 == 0:
            print("Total loss", loss_accum)


if __name__ == "__main__":
    main()

"""Seed §4: federated learning with model averaging on a trusted "secure worker".

bob and alice train copies of the model on their own data; the copies move straight to
secure_worker (never through us), are averaged there, and only the average comes back.
Run: python examples/seed_s4_model_averaging.py
"""
import torch
from torch import nn, optim

import fedmq as sy

hook = sy.TorchHook(torch)
bob = sy.VirtualWorker(hook, id="bob")
alice = sy.VirtualWorker(hook, id="alice")
secure_worker = sy.VirtualWorker(hook, id="secure_worker")

data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.]], requires_grad=True)
target = torch.tensor([[0], [0], [1], [1.]], requires_grad=True)
bob_data = data[0:2].send(bob)
bob_target = target[0:2].send(bob)
alice_data = data[2:].send(alice)
alice_target = target[2:].send(alice)

torch.manual_seed(0)
model = nn.Linear(2, 1)
epochs = 10
worker_iters = 5
for epoch in range(epochs):
    bob_model = model.copy().send(bob)
    alice_model = model.copy().send(alice)
    bob_opt = optim.SGD(params=bob_model.parameters(), lr=0.1)
    alice_opt = optim.SGD(params=alice_model.parameters(), lr=0.1)
    for worker_iter in range(worker_iters):
        bob_opt.zero_grad()
        bob_loss = ((bob_model(bob_data) - bob_target) ** 2).sum()
        bob_loss.backward()
        bob_opt.step()
        bob_loss = bob_loss.get().data

        alice_opt.zero_grad()
        alice_loss = ((alice_model(alice_data) - alice_target) ** 2).sum()
        alice_loss.backward()
        alice_opt.step()
        alice_loss = alice_loss.get().data

    bob_model.move(secure_worker)      # worker to worker: the weights never pass through us
    alice_model.move(secure_worker)
    with torch.no_grad():
        model.weight.set_(((alice_model.weight.data + bob_model.weight.data) / 2).get())
        model.bias.set_(((alice_model.bias.data + bob_model.bias.data) / 2).get())
    print("bob loss: {}".format(bob_loss))
    print("alice loss: {}".format(alice_loss))

preds = model(data)
loss = ((preds - target) ** 2).sum()
print(preds)
print(target)
print(loss.data)
print(f"messages handled: bob {bob.message_count}, alice {alice.message_count}, "
      f"secure_worker {secure_worker.message_count}")

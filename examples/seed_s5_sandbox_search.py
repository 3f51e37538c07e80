"""Seed §5: the sandbox, searching one worker by tag, and searching a grid of workers.

create_sandbox makes six workers and spreads seven datasets over them (tagged, described);
`bob.search(...)` and `grid.search(...)` return pointers to what matches, never the data.
Run: python examples/seed_s5_sandbox_search.py
"""
import torch

import fedmq as sy

sy.create_sandbox(globals(), verbose=True)

x = torch.tensor([1, 2, 3, 4, 5]).tag("#fun", "#boston", "#housing").describe(
    "The input datapoints to the boston housing dataset.")
z = torch.tensor([1, 2, 3, 4, 5]).tag("#fun", "#mnist").describe(
    "The images in the MNIST training da")
x = x.send(bob)  # noqa: F821 - create_sandbox defines the workers
z = z.send(bob)  # noqa: F821

print("\n# bob.search(['#boston', '#housing']): exact tag matches, all tags required")
results = bob.search(["#boston", "#housing"])  # noqa: F821
print(results)
print("\n# the first result's full description")
print(results[0].description)

print("\n# grid.search: {worker id: [pointers]} over the six workers")
boston_data = grid.search("#boston", "#data")  # noqa: F821
boston_target = grid.search("#boston", "#target")  # noqa: F821
for worker_id, pointers in boston_data.items():
    print(f"{worker_id}: data {tuple(pointers[0].shape)}, "
          f"target {tuple(boston_target[worker_id][0].shape)}")

print("\n# the local worker can search any worker too")
me = sy.hook.local_worker
print(me.request_search(["#iris", "#target"], location=alice))  # noqa: F821

import torch
import fedmq as sy
sy.create_sandbox(globals())

torch.tensor([1, 2, 3, 4, 6])

x = torch.tensor([1,2,3,4,5]).tag("#fun", "#boston", "#housing").describe("The input datapoints to the boston housing dataset.")
y = torch.tensor([1,2,3,4,5]).tag("#fun", "#boston", "#housing").describe("The input datapoints to the boston housing dataset.")
z = torch.tensor([1,2,3,4,5]).tag("#fun", "#mnist",).describe("The images in the MNIST training da")

x = x.send(bob)
y = y.send(bob)
z = z.send(bob)

# 这会在标签或说明中搜索完全匹配
results = bob.search(["#boston", "#housing"])
print(results)
print(results[0].description)

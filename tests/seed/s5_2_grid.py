import torch
import fedmq as sy
sy.create_sandbox(globals())

grid = sy.PrivateGridNetwork(*workers)
results = grid.search("#boston")
boston_data = grid.search("#boston", "#data")
boston_target = grid.search("#boston", "#target")

print(results)
print(boston_data)
print(boston_target)

import torch
import fedmq as sy
sy.create_sandbox(globals())

import torch 
import fedmq as sy
hook = sy.TorchHook(torch)

# Local worker should not be a client worker
hook.local_worker.is_client_worker = False

@sy.func2plan(args_shape=[(1,)])
def inc1(x):
    return x + 1

@sy.func2plan(args_shape=[(1,)])
def inc2(x):
        return x + 1
    
@sy.func2plan(args_shape=[(1,)])
def inc3(x):
        return x + 1
    
protocol = sy.Protocol([("worker1", inc1), ("worker2", inc2), ("worker3", inc3)])    # 提供给协议

bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')
charlie = sy.VirtualWorker(hook, id='charlie')

workers = (alice, bob, charlie)
protocol.deploy(*workers)

print(protocol)

# 8.2 运行协议
x = torch.tensor([1.0])
ptr = protocol.run(x)
print(ptr)
print(ptr.get())

james = sy.VirtualWorker(hook, id='james')
protocol.send(james)    # 现在protocol在jame手中了
x = torch.tensor([1.0]).send(james) # 现在我们创建了一个tensor,并发给james
# 此时james既有用数据,又拥有协议,我们便可以远程操控james来远程运行协议
ptr = protocol.run(x)
print(ptr)
ptr = ptr.get()
print(ptr)
ptr = ptr.get()
print(ptr)

# 8.3 搜索协议
protocol = sy.Protocol([("worker1", inc1), ("worker2", inc2), ("worker3", inc3)])
protocol.tag("my_protocol")
protocol.send(james)
me = sy.hook.local_worker

responses = me.request_search(['my_protocol'], location=james)
print(responses)

ptr_protocol = responses[0]
protocol_back = ptr_protocol.get()

print(ptr_protocol)
print(protocol_back)

protocol_back.deploy(*workers)
x = torch.tensor([1.0])
ptr = protocol_back.run(x)
print(ptr.get())

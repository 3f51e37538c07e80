"""Plans and protocols: torch code recorded once as an op list, sent, and run remotely with one
message per call (§8 and §8 bis of the seed document).

    plan.py          Plan, func2plan: tracing a function or class into an op list
    tracer.py        the TorchFunctionMode that records allowlisted ops
    state.py         State: the tensors a plan carries (state.read())
    runner.py        running an op list (on a worker, or locally)
    pointer_plan.py  PointerPlan: a plan on a worker; calling it sends ONE RunPlan
    protocol.py      Protocol, PointerProtocol: plans chained across workers
    messages.py      the wire records (codes 80-89)
    hooks.py         the extension's table: worker handlers for RunPlan and RunProtocol
"""
from fedmq.plans.plan import Plan, func2plan
from fedmq.plans.pointer_plan import PointerPlan
from fedmq.plans.protocol import PointerProtocol, Protocol
from fedmq.plans.state import State
from fedmq.plans.tracer import PlanBuildError

__all__ = ["Plan", "PlanBuildError", "PointerPlan", "PointerProtocol", "Protocol", "State",
           "func2plan"]

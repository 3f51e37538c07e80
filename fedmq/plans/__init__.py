"""Plans and protocols: torch code recorded once as an op list, sent, and run remotely with one
message per call (§8 and §8 bis of the seed document).

The modules, bottom to top (each imports only modules listed before it; the `layers`
contract in pyproject.toml checks it):
    messages.py      the wire records (codes 80-89); a PlanRef becomes the pointer class its
                     kind's module registered (register_pointer_kind)
    state.py         State: the tensors a plan carries (state.read())
    tracer.py        the TorchFunctionMode that records allowlisted ops
    runner.py        running an op list (on a worker, or locally)
    plan.py          Plan, func2plan: tracing a function or class into an op list; `send`
                     makes the pointer class pointer_plan.py registers (use_pointer_class)
    pointer_plan.py  PointerPlan: a plan on a worker; calling it sends ONE RunPlan
    protocol.py      Protocol, PointerProtocol: plans chained across workers
    hooks.py         the extension's table: worker handlers for RunPlan and RunProtocol
(state, tracer and runner do not import each other.)
"""
from fedmq.plans.plan import Plan, func2plan
from fedmq.plans.pointer_plan import PointerPlan
from fedmq.plans.protocol import PointerProtocol, Protocol
from fedmq.plans.state import State
from fedmq.plans.tracer import PlanBuildError

__all__ = ["Plan", "PlanBuildError", "PointerPlan", "PointerProtocol", "Protocol", "State",
           "func2plan"]

"""PySyft 0.2's keyword arguments to `send`, `move` and `get`: each honoured or refused.

PySyft 0.2 signatures (native.py / pointer_tensor.py / hook.py of v0.2.9):
    tensor.send(*location, inplace=False, user=None, local_autograd=False,
                requires_grad=False, preinitialize_grad=False, no_wrap=False,
                garbage_collect_data=True)
    pointer.move(location, requires_grad=False)
    pointer.get(user=None, reason="", deregister_ptr=True)   (native: also inplace=False)
    module.send(*dest, force_send=False, **tensor send keywords)
    module.get(), module.move(destination), module.copy(), tensor.copy(): no keywords

fedmq honours `requires_grad` on a tensor's `send`/`move` (split learning: gradients flow back
across the move, fedmq/pointers/split.py) and `garbage_collect_data` (False: dropping the
pointer leaves the remote object). Every other keyword is accepted only at its PySyft default,
which is what fedmq does; any other value raises TypeError saying why and what to use
instead. A keyword PySyft did not have raises TypeError naming the accepted ones.
"""
from __future__ import annotations

from typing import Any

#: keyword -> (PySyft default, why fedmq cannot do otherwise, what to do instead)
_ONLY_DEFAULT = {
    "inplace": (False, "fedmq's send/get return a new object and leave the tensor as it is",
                "use the returned pointer (a model's send keeps its parameters' identity)"),
    "user": (None, "who a client is comes from its hook's principal or its broker login, "
                   "not from a per-call argument", "connect with that login"),
    "local_autograd": (False, "autograd runs on the worker holding the data",
                       "call .backward() on the remote loss; gradients stay on the worker"),
    "preinitialize_grad": (False, "it belonged to local_autograd, which fedmq does not use",
                           "leave it out"),
    "no_wrap": (False, "a fedmq pointer is itself a torch.Tensor, there is no wrapper to omit",
                "leave it out"),
    "force_send": (False, "a fedmq model's forward is not a Plan sent with it",
                   "leave it out (send a Plan with plan.send(worker))"),
    "reason": ("", "a get is allowed or refused by the worker's policy, not by a request text",
               "leave it out"),
    "deregister_ptr": (True, "get() consumes the pointer",
                       "use ptr.copy().get() to keep the remote object"),
}

TENSOR_SEND = ("inplace", "user", "local_autograd", "requires_grad", "preinitialize_grad",
               "no_wrap", "garbage_collect_data")
MODULE_SEND = ("force_send", *TENSOR_SEND)
MOVE = ("requires_grad",)
GET = ("inplace", "user", "reason", "deregister_ptr")


def check(call: str, kwargs: dict[str, Any], accepted: tuple[str, ...],
          honoured: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the `honoured` keywords of `kwargs` (bools checked); raise TypeError for a
    keyword not in `accepted` or one of `_ONLY_DEFAULT` given another value than PySyft's
    default. `call` names the method in messages, e.g. "PointerTensor.move"."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in accepted:
            raise TypeError(f"{call}() got an unexpected keyword argument {key!r}; it accepts "
                            f"PySyft 0.2's {', '.join(accepted) or 'no keywords'}")
        if key in honoured:
            if key in ("requires_grad", "garbage_collect_data") and not isinstance(value, bool):
                raise TypeError(f"{call}(): {key} must be True or False, not "
                                f"{type(value).__name__}")
            out[key] = value
            continue
        default, why, instead = _ONLY_DEFAULT[key]
        if value != default or type(value) is not type(default):
            raise TypeError(f"{call}(): {key}={value!r} is refused ({why}); {instead}. "
                            f"Only {key}={default!r}, PySyft's default, is accepted")
    return out

"""Protocol rounds as one `LocalStep` message per party (messages.py, record 92).

A round of an SMPC protocol is, on every party, "finish the previous round with the values just
opened, then mask the next ones": a few tensor ops on that party's own shares. `run_steps` sends
each party one LocalStep naming such a function; the party runs it (`handle_local_step`), keeps
some results under ids the coordinator chose and returns the masked values it opens. Every party
is asked at once (`fedmq.client.call_all`), so a round is one round trip over RabbitMQ.

`STEPS` is the allowlist: a LocalStep naming anything else is refused. comparison.py and
beaver.py add their steps to it when imported.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from fedmq.client import call_all
from fedmq.execution import check_release, execute
from fedmq.ids import new_id
from fedmq.smpc.messages import LocalStep
from fedmq.smpc.ring import draw_elements, expand_shares
from fedmq.smpc.shares import make_pointer, to_wire

#: step name -> fn(*args) -> (tensors kept, tensors opened); "prg_shares" is what the crypto
#: provider sends a party to derive its shares from a dealt seed (provider.handle_deal_request)
STEPS: dict[str, Callable[..., tuple]] = {"prg_shares": expand_shares}


def _prg_shares_within_quota(store: Any, seed: Any, draws: Any, layout: Any = None,
                             given: Any = None) -> tuple:
    """"prg_shares" on a share holder: the sender's quota is checked for everything the seed
    expands to before any of it is drawn (a short message must not allocate past it)."""
    if isinstance(draws, list):
        n_objects = len(layout) if isinstance(layout, list) else len(draws)
        check_room = getattr(store, "check_room", None)
        if check_room is not None:
            check_room(8 * draw_elements(draws), n_objects)
    return expand_shares(seed, draws, layout, given)


def handle_local_step(worker: Any, msg: LocalStep) -> list:
    """On a share holder: run one allowlisted step (fedmq.execution.execute: its kept tensors
    are bound under the caller's ids, or its failure recorded there); return what it opens."""
    step = STEPS.get(msg.step) if isinstance(msg.step, str) else None
    op = msg.step if step is not None else None
    if step is None:  # fails inside execute, so the failure is recorded like any other
        step = functools.partial(_unknown_step, msg.step)
    elif op == "prg_shares":
        step = functools.partial(_prg_shares_within_quota, worker.store)
    opened = execute(step, msg.args, None, msg.result_ids, worker.store, worker.id, op=op,
                     split=True)
    # what a step opens leaves in the clear: from private data, only as the policy releases
    # (a step's masks are the caller's to choose, so an opening is a release)
    check_release(list(opened), worker.store, worker.id, op, tensors_leave=True)
    return list(opened)


def local_step_values(msg: LocalStep) -> list | None:
    """What a round reads (its Refs and inline tensors), for a service deciding whether it may
    run it on its event loop (fedmq.worker.register_light): a round's work is elementwise or a
    product over those. "prg_shares" is never light (its draws are sized by ints, and a crypto
    provider's deal can be large); nor is an unknown step (its error comes from the op thread),
    nor a convolution's product (its work grows with the kernel, not only the elements)."""
    if not isinstance(msg.step, str) or msg.step not in STEPS or msg.step == "prg_shares":
        return None
    args = msg.args
    if not isinstance(args, list) or any(type(a) is str and a == "conv2d" for a in args):
        return None
    return args


def _unknown_step(name: Any, *args: Any) -> tuple:
    raise ValueError(f"unknown SMPC step {name!r}")


def run_steps(step: str, per_party_args: list, n_kept: int, shape, want_reply: bool):
    """Send `step` to every party (`per_party_args`: (location, args) pairs, args holding
    pointers to that party's shares, public tensors, ints). Returns (kept pointers per party,
    opened values per party); without `want_reply` the messages are posted (pipelined)."""
    kept, calls = [], []
    for location, args in per_party_args:
        ids = [new_id() for _ in range(n_kept)]
        msg = LocalStep(step, to_wire(list(args), location), ids)
        if want_reply:
            calls.append((location, msg))
        else:
            location.post(msg)
        kept.append([make_pointer(location, i, shape) for i in ids])
    return kept, call_all(calls) if want_reply else []


def combine(opened: list, index: int, how: str) -> torch.Tensor:
    """Value `index` opened by every party, recombined: "add" (additive) or "xor" (binary)."""
    total = opened[0][index]
    for values in opened[1:]:
        total = total + values[index] if how == "add" else total ^ values[index]
    return total

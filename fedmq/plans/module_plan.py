"""Models and losses as plans: how a worker trains an architecture it has no code for.

PySyft 0.2 sent models as TorchScript and Flower ships the user's Python to every client; in
fedmq the model travels as data. `model_plan(model, example)` traces the module's forward pass
twice, in `train()` and in `eval()` mode, with fedmq's tracer (fedmq/plans/tracer.py): the op
lists hold allowlisted torch calls only, with the module's `state_dict()` entries as the plan's
state. The worker runs them with `fedmq.plans.runner.run` on weights that travel beside the
plan, so autograd, the optimizer and the buffers' in-place updates (BatchNorm's running
statistics, `num_batches_tracked`) all happen on the worker, as in the module itself:

    rec = model_plan(net, torch.zeros(32, 1, 28, 28), loss_fn=F.nll_loss)
    out = run_forward(rec, "train", batch, state)     # state: tensors in rec.state_names order

`model` may be an `nn.Module` (a fedmq `Plan` is one), or a `torch.jit.trace`d module, read node
by node by fedmq/plans/torchscript.py (no TorchScript travels). `loss_fn` may be a function of
(output, target), a fedmq Plan, or a `torch.jit.script`ed function.

Batch size: shapes read while tracing are frozen (tracer.py), so a model that writes
`x.view(x.size(0), -1)` records its example's batch size. `model_plan` traces a second time
with one more sample and compares: `batch_generic` says whether the op lists are the same. A
worker trains a batch-specific plan on full batches only and pads its last evaluation batch.

Faithful (tests/test_model_plans.py: SGD with momentum through the plan leaves weights and
buffers where PyTorch leaves them, bit for bit here, and eval outputs match): Linear, Conv1d/2d,
BatchNorm1d/2d (running statistics and `num_batches_tracked` updated in train mode only),
LayerNorm, GroupNorm, Dropout (off in eval; in train it draws from the worker's generator for
the principal, or the global RNG outside a worker message), Embedding, LSTM/GRU/RNN (the
kernels `torch.lstm` / `gru` / `rnn_*`, any layers, bidirectional, batch_first, dropout between
layers), max/avg/adaptive pooling 1-d and 2-d, residual additions, relu/gelu/silu/tanh/
sigmoid/leaky_relu/softmax/log_softmax, and the nll, cross_entropy (label_smoothing too), mse,
l1 and bce_with_logits losses; torchvision's resnet18. Also as `torch.jit.trace` results
(torchscript.py). Not faithful, refused while building: BatchNorm with `momentum=None` (reads
`num_batches_tracked` as a Python number), packed sequences (`pack_padded_sequence` is off the
allowlist). An RNN's zero initial state has the example's batch size: `batch_generic` is False.

Grad mode: `run_forward` / `run_loss` under the caller's `torch.no_grad()` record no autograd
history (as the module would: no graph kept during evaluation, the kernels' inference paths).

Memory: tracing holds the tensors the forward pass keeps alive itself (with autograd on, what
backward needs: about one forward pass of the example batch; the weights are not copied), not
every intermediate (tracer.py holds them weakly); running drops each intermediate after its
last use (runner.py).
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch
from torch import nn

from fedmq import messages as m, serde
from fedmq.plans import runner, state as state_mod, torchscript, tracer
from fedmq.plans.messages import ModelPlanRecord, PlanRecord
from fedmq.plans.plan import Plan
from fedmq.plans.tracer import PlanBuildError


def _state(model: Any) -> tuple[list[str], list[torch.Tensor]]:
    """The model's state_dict entries (names, the tensor objects themselves)."""
    entries = model.state_dict(keep_vars=True)
    names, tensors, seen = [], [], {}
    for name, t in entries.items():
        if id(t) in seen:
            raise PlanBuildError(f"{name} and {seen[id(t)]} are the same tensor (tied "
                                 f"weights); a model plan needs one tensor per state entry")
        seen[id(t)] = name
        names.append(name)
        tensors.append(t)
    return names, tensors


def _forward(model: Any, training: bool) -> Callable[[list, dict], Any]:
    """A callable running the model's forward pass in mode `training` on (inputs, attrs)."""
    if torchscript.is_torchscript(model):
        graph = torchscript.inlined_graph(model)
        return lambda inputs, attrs: torchscript.run_graph(graph, inputs, attrs,
                                                           training=training)
    return lambda inputs, attrs: model(*inputs)


def _trace(call: Callable[[], Any], inputs: list, state: list, name: str) -> PlanRecord:
    saved = state_mod.snapshot(state)
    try:
        traced = tracer.trace(call, inputs, state)
    finally:
        state_mod.restore(saved)
    if not isinstance(traced.output, m.Ref):
        raise PlanBuildError(f"{name}: the forward pass must return one tensor computed from "
                             f"its input, got {type(traced.output_value).__name__}")
    return PlanRecord(0, name, traced.input_slots, traced.state_slots, [], traced.ops,
                      traced.output, False, "ModelPlan")


def _one_more(example: torch.Tensor) -> torch.Tensor:
    return torch.cat([example, example[:1]])


def same_ops(a: Any, b: Any) -> bool:
    """Whether two op lists (or any values in them) are the same, tensors by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_ops(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_ops(a[k], b[k]) for k in a)
    if isinstance(a, m.Command):
        return (a.op == b.op and a.result_ids == b.result_ids
                and a.grad_enabled == b.grad_enabled and same_ops(a.args, b.args)
                and same_ops(a.kwargs, b.kwargs))
    return a == b


def model_plan(model: Any, example: torch.Tensor | None = None, *, batch_size: int | None = None,
               loss_fn: Any = None, example_target: torch.Tensor | None = None,
               name: str | None = None) -> ModelPlanRecord:
    """`model` as a `ModelPlanRecord` (see the module docstring).

    model: an nn.Module (a fedmq Plan included) or a `torch.jit.trace`d module.
    example: an input batch (any values; its first dimension is the batch size). For a traced
        module it may be omitted: zeros of the traced shape with `batch_size` rows.
    loss_fn: optional, see `loss_plan`; example_target: a target batch for it (default: class
        indices, int64 zeros of shape [batch]; then float zeros shaped like the output).
    The model's state and mode are left as they were. Raises PlanBuildError (an op off the
    allowlist: OpNotAllowedError; unreadable TorchScript: TorchScriptError)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, a fedmq Plan or a torch.jit.trace "
                        f"result, not {type(model).__name__}")
    if example is None:
        if not torchscript.is_torchscript(model):
            raise TypeError("model_plan needs an example input batch for an nn.Module")
        (example,) = torchscript.example_inputs(model, batch_size or 1)
    elif batch_size is not None and len(example) != batch_size:
        raise ValueError(f"the example has {len(example)} rows, batch_size is {batch_size}")
    if not isinstance(example, torch.Tensor) or example.dim() == 0 or not len(example):
        raise ValueError("the example input must be a tensor with a batch dimension")
    name = name or getattr(model, "original_name", None) or type(model).__name__
    names, state = _state(model)
    attrs = dict(zip(names, state))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    was_training = model.training
    records = {}
    try:
        for mode in ("train", "eval"):
            model.train(mode == "train")
            forward = _forward(model, mode == "train")
            x = example.detach().clone()
            records[mode] = _trace(lambda: forward([x], attrs), [x], state, f"{name}.{mode}")
        model.train(True)
        forward = _forward(model, True)
        x = _one_more(example.detach())
        bigger = _trace(lambda: forward([x], attrs), [x], state, f"{name}.train")
        model.train(False)
        with torch.no_grad():
            output = _forward(model, False)([example.detach().clone()], attrs)
    finally:
        model.train(was_training)
    generic = same_ops(records["train"].ops, bigger.ops)
    loss, loss_generic = None, True
    if loss_fn is not None:
        loss, loss_generic = loss_plan(loss_fn, output, example_target)
    return ModelPlanRecord(name, records["train"], records["eval"], names,
                           [list(t.shape) for t in state], [str(t.dtype) for t in state],
                           [n for n, t in zip(names, state) if id(t) in trainable],
                           len(example) if not (generic and loss_generic) else 1, generic,
                           loss, loss_generic)


def _loss_call(loss_fn: Any) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    if isinstance(loss_fn, torch.jit.ScriptFunction):
        graph = torchscript.inlined_graph(loss_fn)
        return lambda out, y: torchscript.run_graph(graph, [out, y], None)
    if isinstance(loss_fn, torch.jit.ScriptModule):
        graph = torchscript.inlined_graph(loss_fn)
        names, state = _state(loss_fn)
        return lambda out, y: torchscript.run_graph(graph, [out, y], dict(zip(names, state)))
    if isinstance(loss_fn, Plan):
        return lambda out, y: loss_fn(out, y)
    if callable(loss_fn):
        return loss_fn
    raise TypeError(f"loss_fn must be a function of (output, target), a fedmq Plan or a "
                    f"torch.jit.script function, not {type(loss_fn).__name__}")


def loss_plan(loss_fn: Any, output: torch.Tensor,
              target: torch.Tensor | None = None) -> tuple[PlanRecord, bool]:
    """`loss_fn(output, target) -> 0-dim mean loss` as a plan with inputs (output, target),
    and whether it serves any batch size. `target` defaults to int64 class indices (zeros,
    shape [batch]), then float zeros shaped like `output` if the loss refuses those.
    Raises PlanBuildError when the loss does not return one 0-dim tensor."""
    call = _loss_call(loss_fn)
    candidates = [target] if target is not None else [
        torch.zeros(len(output), dtype=torch.long), torch.zeros_like(output)]
    error: Exception | None = None
    for y in candidates:
        out = output.detach().clone().requires_grad_(output.is_floating_point())
        try:
            rec = _trace(lambda: call(out, y), [out, y], [], "loss")
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            if isinstance(exc, PlanBuildError) and "must return" not in str(exc):
                raise
            error = exc
            continue
        value = runner.run(rec, [output.detach(), y], [], "me")
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise PlanBuildError("loss_fn must return a 0-dim tensor (the batch's mean loss)")
        out2, y2 = _one_more(output.detach()), _one_more(y)
        bigger = _trace(lambda: call(out2, y2), [out2, y2], [], "loss")
        return rec, same_ops(rec.ops, bigger.ops)
    raise PlanBuildError(f"loss_fn could not be traced on the model's output "
                         f"{tuple(output.shape)} with class-index or same-shape targets; give "
                         f"an example_target ({type(error).__name__}: {error})")


#: the longest model or state-entry name a worker accepts
MAX_NAME = 200
#: the largest batch size a model plan may be traced for (a worker pads to it)
MAX_BATCH_SIZE = 1 << 16


def digest(rec: Any) -> str:
    """`sha256:<hex>` of the record's wire encoding: the name a worker caches a plan under."""
    return "sha256:" + hashlib.sha256(serde.encode(rec)).hexdigest()


def check_weights(rec: ModelPlanRecord, weights: Any) -> list[torch.Tensor]:
    """The tensors of `weights` (a state_dict) in the plan's state order, after checking
    names, shapes and dtypes. Raises ValueError naming the first mismatch."""
    if not isinstance(weights, dict):
        raise ValueError("weights must be a dict of tensors (a state_dict)")
    missing = [n for n in rec.state_names if n not in weights]
    extra = [n for n in weights if n not in set(rec.state_names)]
    if missing or extra:
        raise ValueError(f"weights do not fit model plan {rec.name!r}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    out = []
    for name, shape, dtype in zip(rec.state_names, rec.state_shapes, rec.state_dtypes):
        t = weights[name]
        if not isinstance(t, torch.Tensor) or list(t.shape) != list(shape) \
                or str(t.dtype) != dtype:
            got = (f"{str(t.dtype)} {list(t.shape)}" if isinstance(t, torch.Tensor)
                   else type(t).__name__)
            raise ValueError(f"weights[{name!r}] must be {dtype} {list(shape)}, got {got}")
        out.append(t)
    return out


def validate(rec: Any, worker_id: str | None = None) -> ModelPlanRecord:
    """Check a model plan that came from the wire before running any of it."""
    if type(rec) is not ModelPlanRecord:
        raise ValueError(f"expected a ModelPlanRecord, got {type(rec).__name__}")
    names = [rec.name, *rec.state_names] if isinstance(rec.state_names, list) else [rec.name]
    if not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME and n.isprintable()
               for n in names):  # they are logged and quoted in errors
        raise ValueError(f"model plan is malformed: its name and state names are printable "
                         f"strings of at most {MAX_NAME} characters")
    n = len(rec.state_names)
    if not (len(rec.state_shapes) == len(rec.state_dtypes) == n) or \
            not set(rec.parameters) <= set(rec.state_names) or \
            type(rec.batch_size) is not int or not 1 <= rec.batch_size <= MAX_BATCH_SIZE or \
            type(rec.batch_generic) is not bool or type(rec.loss_generic) is not bool:
        raise ValueError(f"model plan {rec.name!r} is malformed")
    for plan, inputs in ((rec.train, 1), (rec.eval, 1), (rec.loss, 2)):
        if plan is None and inputs == 2:
            continue
        if type(plan) is not PlanRecord or len(plan.input_slots) != inputs or \
                len(plan.state_slots) != (n if inputs == 1 else 0):
            raise ValueError(f"model plan {rec.name!r} is malformed")
        if plan.state:
            raise ValueError(f"model plan {rec.name!r} is malformed: weights travel apart")
        runner.validate(PlanRecord(plan.id, plan.name, plan.input_slots, plan.state_slots,
                                   [None] * len(plan.state_slots), plan.ops, plan.output),
                        worker_id)
    return rec


def describe(rec: ModelPlanRecord, limit: int = 2000) -> str:
    """What a data owner reviews before allowing a plan (`fedmq worker --allow-model`): its
    ops in order, its state entries with shapes (trainable ones marked), its loss's ops."""
    ops = ", ".join(op.op for op in rec.train.ops)
    loss = ", ".join(op.op for op in rec.loss.ops) if rec.loss is not None else "by name"
    trainable = set(rec.parameters)
    state = ", ".join(f"{n}{'*' if n in trainable else ''} {list(s)}"
                      for n, s in zip(rec.state_names, rec.state_shapes))
    text = (f"model plan {rec.name!r}: train ops [{ops}]; loss [{loss}]; state (* trainable) "
            f"[{state}]; batch {'any' if rec.batch_generic else rec.batch_size}")
    return text if len(text) <= limit else text[:limit] + " ..."


def run_forward(rec: ModelPlanRecord, mode: str, x: torch.Tensor, state: list,
                worker_id: str) -> torch.Tensor:
    """The model's output on batch `x` in mode "train" or "eval" (state: tensors in
    `rec.state_names` order; in train mode buffers are updated in place). Under the caller's
    `torch.no_grad()` no op records autograd history, as in the module. Raises ValueError
    for another mode; a failing op raises the worker's RemoteError naming it."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', not {mode!r}")
    return runner.run(rec.train if mode == "train" else rec.eval, [x], state, worker_id,
                      grad=torch.is_grad_enabled())


def run_loss(rec: ModelPlanRecord, output: torch.Tensor, target: torch.Tensor,
             worker_id: str) -> torch.Tensor:
    """The plan's loss (0-dim mean over the batch; without autograd under `torch.no_grad()`)."""
    return runner.run(rec.loss, [output, target], [], worker_id, grad=torch.is_grad_enabled())

"""Reading TorchScript: run a `torch.jit.trace`d module or a `torch.jit.script`ed function as
the torch calls its graph stands for, so that fedmq's tracer records them as a plan.

PySyft 0.2 shipped models as TorchScript and ran them with the TorchScript interpreter on the
worker: any code in the graph ran there. fedmq never sends TorchScript. On the client,
`run_graph` walks the (inlined, constant-folded) graph node by node and calls the public torch
function each `aten::` node stands for (`aten::_convolution` -> `F.conv2d`, `aten::linear` ->
`F.linear`, `aten::nll_loss_nd` -> `F.nll_loss`, ...). Run under `fedmq.plans.tracer`, those
calls become the plan's op list, checked against the allowlist like any other plan: an op with
no public equivalent or off the allowlist is refused while building, naming the node.

Modes: `torch.jit.trace` freezes the mode it traced in (dropout's, batch norm's and the
recurrent kernels' `train` flags are constants of the graph). `run_graph(..., training=)`
overrides those flags; in eval mode it skips the `num_batches_tracked += 1` a BatchNorm traced
in train mode carries, and in train mode it adds the one a BatchNorm traced in eval mode lacks,
so one traced module gives a plan that honours `train()` and `eval()` as the module it came
from would. Not faithful: a BatchNorm with `momentum=None` (its factor 1/num_batches_tracked
is a constant of the trace; an nn.Module with one is refused by the tracer instead).

Control flow (`prim::If`, `prim::Loop`) left after constant propagation is refused: a traced
module has none, a scripted loss function written with tensors only has none once inlined.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedmq.errors import FedmqError


class TorchScriptError(FedmqError, ValueError):
    """A TorchScript graph that cannot be read as torch calls (the message names the node)."""


_REDUCTIONS = ("none", "mean", "sum")


def _conv(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
          *_flags):
    dims = weight.dim() - 2
    if transposed:
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
        return fn(input, weight, bias, stride, padding, output_padding, groups, dilation)
    fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return fn(input, weight, bias, stride, padding, dilation, groups)


def _batch_norm(training):
    def run(input, weight, bias, running_mean, running_var, train, momentum, eps, *_):
        return F.batch_norm(input, running_mean, running_var, weight, bias,
                            train if training is None else training, momentum, eps)
    return run


def _dropout(fn, training):
    def run(input, p, train):
        return fn(input, p, train if training is None else training)
    return run


def _recurrent(fn, training):
    """aten::lstm / gru / rnn_*: the `train` flag (position 6 of the padded-input form, 7 of
    the packed form) is the mode the module was traced in; `training` overrides it."""
    def run(*args):
        if training is not None:
            packed = isinstance(args[1 if fn is torch.lstm else 2], torch.Tensor)
            at = 7 if packed else 6
            args = args[:at] + (training,) + args[at + 1:]
        return fn(*args)
    return run


def _index(dim, index):
    """The `__getitem__` index selecting `index` (an int or a slice) along dimension `dim`."""
    return (slice(None),) * dim + (index,)


def _slice(x, dim=0, start=None, end=None, step=1):
    return x[_index(dim, slice(start, end, step))]


def _nll(input, target, weight, reduction, ignore_index):
    return F.nll_loss(input, target, weight, ignore_index=ignore_index,
                      reduction=_REDUCTIONS[reduction])


def _cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing=0.0):
    return F.cross_entropy(input, target, weight, ignore_index=ignore_index,
                           reduction=_REDUCTIONS[reduction], label_smoothing=label_smoothing)


def _special(training: bool | None) -> dict:
    """aten ops whose schema differs from the public function's."""
    return {
        "_convolution": _conv,
        "conv1d": F.conv1d, "conv2d": F.conv2d,
        "batch_norm": _batch_norm(training),
        "dropout": _dropout(F.dropout, training),
        "dropout_": _dropout(lambda x, p, t: F.dropout(x, p, t, inplace=True), training),
        "feature_dropout": _dropout(F.dropout2d, training),
        "linear": F.linear,
        "layer_norm": lambda x, shape, w, b, eps, *_: F.layer_norm(x, shape, w, b, eps),
        "group_norm": lambda x, g, w, b, eps, *_: F.group_norm(x, g, w, b, eps),
        "max_pool1d": lambda x, k, s, p, d, c: F.max_pool1d(x, k, s, p, d, ceil_mode=c),
        "max_pool2d": lambda x, k, s, p, d, c: F.max_pool2d(x, k, s, p, d, ceil_mode=c),
        "max_pool1d_with_indices": lambda x, k, s, p, d, c: F.max_pool1d(
            x, k, s, p, d, ceil_mode=c, return_indices=True),
        "max_pool2d_with_indices": lambda x, k, s, p, d, c: F.max_pool2d(
            x, k, s, p, d, ceil_mode=c, return_indices=True),
        "avg_pool1d": lambda x, k, s, p, c, cip: F.avg_pool1d(x, k, s, p, c, cip),
        "avg_pool2d": lambda x, k, s, p, c, cip, div=None: F.avg_pool2d(x, k, s, p, c, cip,
                                                                        div),
        "adaptive_avg_pool1d": F.adaptive_avg_pool1d,
        "adaptive_avg_pool2d": F.adaptive_avg_pool2d,
        "adaptive_max_pool1d": lambda x, size: F.adaptive_max_pool1d(x, size, True),
        "adaptive_max_pool2d": lambda x, size: F.adaptive_max_pool2d(x, size, True),
        "relu_": lambda x: F.relu(x, inplace=True),
        "leaky_relu_": lambda x, slope=0.01: F.leaky_relu(x, slope, inplace=True),
        "hardtanh_": lambda x, lo=-1.0, hi=1.0: F.hardtanh(x, lo, hi, inplace=True),
        "lstm": _recurrent(torch.lstm, training),
        "gru": _recurrent(torch.gru, training),
        "rnn_tanh": _recurrent(torch.rnn_tanh, training),
        "rnn_relu": _recurrent(torch.rnn_relu, training),
        "slice": _slice,
        "select": lambda x, dim, index: x[_index(dim, index)],
        "log_softmax": lambda x, dim, dtype=None: F.log_softmax(x, dim, dtype=dtype),
        "softmax": lambda x, dim, dtype=None: F.softmax(x, dim, dtype=dtype),
        "nll_loss_nd": _nll, "nll_loss": _nll, "nll_loss2d": _nll,
        "cross_entropy_loss": _cross_entropy,
        "mse_loss": lambda x, y, r: F.mse_loss(x, y, reduction=_REDUCTIONS[r]),
        "l1_loss": lambda x, y, r: F.l1_loss(x, y, reduction=_REDUCTIONS[r]),
        "binary_cross_entropy_with_logits": lambda x, y, w, pos, r:
            F.binary_cross_entropy_with_logits(x, y, w, pos_weight=pos,
                                               reduction=_REDUCTIONS[r]),
        "embedding": lambda w, idx, pad=-1, *_: F.embedding(idx, w,
                                                            None if pad < 0 else pad),
        "view": lambda x, size: x.view(size),
        "reshape": lambda x, size: x.reshape(size),
        "contiguous": lambda x, memory_format=None: x.contiguous(),
        "size": lambda x, dim=None: x.size() if dim is None else x.size(dim),
        "Int": int, "Float": float,
        "ScalarImplicit": lambda t: t.item() if isinstance(t, torch.Tensor) else t,
        "detach": lambda x: x.detach(),
    }


#: TorchScript passes these enums as ints (c10::ScalarType, Layout, MemoryFormat)
_DTYPES = {0: torch.uint8, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.int64,
           5: torch.float16, 6: torch.float32, 7: torch.float64, 9: torch.complex64,
           10: torch.complex128, 11: torch.bool, 15: torch.bfloat16}
_ENUMS = {"dtype": _DTYPES, "layout": {0: torch.strided},
          "memory_format": {0: torch.contiguous_format, 1: torch.preserve_format,
                            2: torch.channels_last, 3: torch.channels_last_3d}}


def _enum(name: str, value: Any) -> Any:
    """An int TorchScript passes for argument `name` (a dtype, layout, memory format) as the
    torch object; other values as they are. Raises TorchScriptError for an unknown code."""
    table = _ENUMS.get(name)
    if table is None or type(value) is not int:
        return value
    if value not in table:
        raise TorchScriptError(f"TorchScript {name} code {value} is not one fedmq knows")
    return table[value]


def _schema(node: torch._C.Node):
    try:
        return torch._C.parse_schema(node.schema())
    except Exception:
        return None


def _call_aten(node: torch._C.Node, name: str, args: list, special: dict) -> Any:
    if name in special:
        return special[name](*args)
    schema = _schema(node)
    positional, keywords = list(args), {}
    if schema is not None:
        positional, keywords = [], {}
        for argument, value in zip(schema.arguments, args):
            value = _enum(argument.name, value)
            if argument.kwarg_only:
                keywords[argument.name] = value
            else:
                positional.append(value)
    fn = getattr(torch, name, None)
    if fn is None and positional and isinstance(positional[0], torch.Tensor):
        fn = getattr(torch.Tensor, name, None)
    if fn is None:
        fn = getattr(F, name, None)
    if fn is None:
        raise TorchScriptError(f"TorchScript node aten::{name} has no public torch function "
                               f"fedmq can record ({node.schema()})")
    if keywords.get("out") is None:
        keywords.pop("out", None)
    return fn(*positional, **keywords)


def inlined_graph(fn: Any) -> torch._C.Graph:
    """The graph of a scripted function or traced module with calls inlined and constants
    folded (a copy; `fn` is unchanged)."""
    graph = fn.inlined_graph if hasattr(fn, "inlined_graph") else fn.graph
    graph = graph.copy()
    torch._C._jit_pass_inline(graph)
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    return graph


def is_torchscript(obj: Any) -> bool:
    return isinstance(obj, (torch.jit.ScriptModule, torch.jit.ScriptFunction))


def example_inputs(module: torch.jit.ScriptModule, batch_size: int) -> list:
    """Example tensors (zeros) of the shapes and dtypes a traced module was traced with, with
    the first dimension set to `batch_size`. Raises TorchScriptError when a shape is unknown
    (a scripted module: give example inputs)."""
    out = []
    for value in list(module.graph.inputs())[1:]:
        kind = value.type()
        sizes = kind.sizes() if isinstance(kind, torch._C.TensorType) else None
        if not sizes or any(s is None for s in sizes):
            raise TorchScriptError(f"the input {value.debugName()} of this TorchScript module "
                                   f"has no recorded shape; give an example input")
        dtype = kind.dtype() or torch.float32
        out.append(torch.zeros([batch_size] + list(sizes[1:]), dtype=dtype))
    return out


def _count_batch(attributes: dict, running_mean: Any, counted: list) -> None:
    """Before a BatchNorm in train mode: `num_batches_tracked += 1` of the module whose
    `running_mean` this is, as nn.BatchNorm does, unless the graph did it already (a module
    traced in eval mode has no such node)."""
    if not isinstance(running_mean, torch.Tensor):
        return
    for path, value in attributes.items():
        if value is running_mean and path.endswith("running_mean"):
            counter = attributes.get(path[:-len("running_mean")] + "num_batches_tracked")
            if isinstance(counter, torch.Tensor) and not any(c is counter for c in counted):
                counter.add_(1)
                counted.append(counter)
            return


def run_graph(graph: torch._C.Graph, inputs: list, attributes: dict[str, Any], *,
              training: bool | None = None) -> Any:
    """Evaluate `graph` on `inputs` by calling torch functions node by node.

    inputs: the graph's inputs after `self` when `attributes` is given (a module's graph), else
        all of them (a function's graph).
    attributes: a module's parameters and buffers by dotted name (`conv1.weight`), the very
        tensor objects the tracer knows as state.
    training: override the graph's dropout / batch-norm flags (None: as traced).
    Returns the graph's output (a tensor, or a tuple/list of them). Raises TorchScriptError."""
    special = _special(training)
    env: dict[Any, Any] = {}
    graph_inputs = list(graph.inputs())
    if attributes is not None:
        env[graph_inputs[0]] = ""  # `self`: the empty attribute path
        graph_inputs = graph_inputs[1:]
    if len(graph_inputs) != len(inputs):
        raise TorchScriptError(f"the TorchScript graph takes {len(graph_inputs)} input(s), "
                               f"got {len(inputs)}")
    env.update(zip(graph_inputs, inputs))
    counters = [t for k, t in (attributes or {}).items() if k.endswith("num_batches_tracked")]
    counted: list = []  # the counters this run incremented
    for node in graph.nodes():
        kind = node.kind()
        outs = list(node.outputs())
        args = [env[v] for v in node.inputs()]
        if kind == "prim::Constant":
            env[outs[0]] = node.output().toIValue() if node.hasAttributes() else None
        elif kind == "prim::GetAttr":
            path = ".".join(p for p in (args[0], node.s("name")) if p)
            env[outs[0]] = attributes[path] if path in attributes else path
        elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            env[outs[0]] = list(args) if kind == "prim::ListConstruct" else tuple(args)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            env.update(zip(outs, args[0]))
        elif kind == "prim::TupleIndex" or kind == "aten::__getitem__":
            env[outs[0]] = args[0][args[1]]
        elif kind == "prim::NumToTensor":
            env[outs[0]] = args[0]
        elif kind == "aten::add_" and counters and any(c is args[0] for c in counters):
            if training is False:
                env[outs[0]] = args[0]  # eval mode: a BatchNorm does not count batches
                continue
            counted.append(args[0])
            env[outs[0]] = _call_aten(node, "add_", args, special)
        elif kind.startswith("aten::"):
            if kind == "aten::batch_norm" and training and counters:
                _count_batch(attributes, args[3], counted)
            try:
                value = _call_aten(node, kind[len("aten::"):], args, special)
            except TorchScriptError:
                raise
            except FedmqError:
                raise
            except Exception as exc:
                raise TorchScriptError(f"TorchScript node {kind} could not be run as a torch "
                                       f"call: {type(exc).__name__}: {exc}") from exc
            if len(outs) == 1:
                env[outs[0]] = value
            else:
                env.update(zip(outs, value))
        else:
            raise TorchScriptError(f"TorchScript node {kind} is not supported in a plan "
                                   f"(control flow and calls must be traced away: use "
                                   f"torch.jit.trace, or write the function with tensor ops)")
    results = [env[v] for v in graph.outputs()]
    return results[0] if len(results) == 1 else tuple(results)

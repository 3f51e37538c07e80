"""What a message may ask a worker to run. Please keep each list sorted.

A name here is the wire name of an op: "torch.X" is `torch.X`, "Tensor.X" is the tensor method
(operators included: `x + y` arrives as "Tensor.__add__"), "F.X" is `torch.nn.functional.X`.
Anything else is refused with `OpNotAllowedError` by the client and `RemoteOpNotAllowed` by the
worker. Adding an op means adding its name, and its class below (tests/test_ops_audit.py fails
until it has one): the executor has no per-op code, except the few replacements in safe.py and
the per-principal generator random ops draw from (rng.py).

The audit (issue 12, item 5: no shared process state leaks). A worker runs ops for several
principals in one process, so an op must not reach anything but the tensors it is given:

- Memory it was not given. Nothing here returns uninitialised memory: `torch.empty_like` runs
  zero-filled (safe.py; torch's allocator hands freed memory back as it is, so an empty tensor
  showed another principal's freed secret, byte for byte: tested). Not allowed, for the same
  reason or because they read or write outside a tensor's bounds or alias raw storage:
  `empty`, `new_empty`, `empty_strided`, `resize_`/`resize_as_`, `set_` (storage level),
  `as_strided` (any strides over the storage), `storage`/`untyped_storage`, `data_ptr`,
  `from_file`, `frombuffer`, `Tensor.numpy` (removed: an ndarray aliasing the tensor's memory,
  which could not even be sent back; `.get()` fetches the values). The allowed views (`view`,
  `expand`, `T`, `__getitem__`, `data`...) are bounds-checked by torch; indices (`gather`,
  `index_select`, `scatter`, `embedding`, `nll_loss` targets, tensor indices) are checked on the
  CPU. A view or the `data` setter can alias the data owner's tensor: writes through any alias
  are refused by storage (fedmq.store.ObjectStore.guard_writes, fed by fedmq.ops.written).
- Process-global or host state. No op here touches it: no RNG seeding or state
  (`manual_seed`, `seed`, `set_rng_state`, `get_rng_state`), no `set_num_threads`,
  `set_default_dtype`/`set_default_device`, `use_deterministic_algorithms`,
  `set_printoptions`, `set_grad_enabled` (a command's grad mode is a thread-local context the
  executor sets), `autograd.set_detect_anomaly`, no file or network IO (`save`, `load`,
  `from_file`), no hooks (`register_hook`: code), no `Tensor.type` (a string naming a class),
  no pickling dunders (`__reduce__`, `__reduce_ex__`, `__setstate__`, `__getstate__`,
  `__deepcopy__`); tests/test_ops_audit.py walks the registry for all of these. Random ops
  draw from the principal's own generator, never the process's (rng.py, class RANDOM below).
  Devices: `Tensor.to` and the `*_like` ops refuse any device but the CPU and
  `pin_memory=True` (safe.py: CUDA's lazy initialisation is process-wide and a GPU is shared
  by every process; `meta` tensors have no data); `cuda`/`pin_memory` methods are not allowed.
- What arguments can be. Arguments come off the wire, which decodes only ints, floats, bools,
  str, bytes, None, lists, tuples, dicts, sets, slices, Ellipsis, complex, dtypes, devices,
  memory formats, `torch.Size`, tensors, Refs and fedmq's records (none of which defines
  `__index__`, `__torch_function__`, `__array__`, `__iter__` or `__len__`): no object whose
  methods a client chose reaches torch, so odd indices (`x[{0}]`, `x["a"]`, `x[2**70]`, a
  record, slices with huge steps) get torch's own errors (tested). A string argument is a device (checked above), a reduction, a
  mode or a norm name, never a class or a path. Positional `inplace`/`out` arguments
  (`F.relu(x, True)`, `torch.norm(x, 2, 0, False, out)`) and `F.embedding(max_norm=)` (which
  renormalises the weight rows in place) count as writes (fedmq.ops.written).
- Size. A result may be much larger than its inputs: class ALLOCATES_BY_SIZE lists the ops
  whose result size a non-tensor argument sets (the resource pre-check's list), but pure ops
  also grow (`outer`, `matmul`, broadcasting `x + y`, anything computed from an `expand`ed
  view): a bound must come from the result shapes (fedmq.shapes), not from the input sizes.
  `Tensor.tolist` is capped (safe.MAX_TOLIST elements: ~30 bytes of Python object each).
  dtype conversions (`to`, `double`, `type_as`, `*_like(dtype=)`) grow a result at most 16x
  (bool to complex128).
"""

# -- torch.X ------------------------------------------------------------------------------------
# Elementwise math, reductions, comparisons, shape functions and views: pure (no state, results
# bounded by the result shape). `_foreach_*`: lists of tensors (optimizers' multi-tensor path);
# the trailing-underscore ones write their first list. `empty_like` runs zero-filled; the
# `*_like` ops are CPU only (safe.py); `rand_like`/`randn_like` are random (rng.py).
# `allclose`, `equal`, `is_nonzero` return a Python value computed from the data; `numel`,
# `is_complex`, `is_floating_point` only metadata the pointer already has. `lstm`, `gru`,
# `rnn_tanh`, `rnn_relu`: the recurrent kernels nn.LSTM / nn.GRU / nn.RNN call (weights as a
# list argument); random (the dropout between layers, in training: rng.recurrent).
TORCH_FUNCTIONS = [
    "_foreach_abs", "_foreach_abs_", "_foreach_add", "_foreach_add_", "_foreach_addcdiv_",
    "_foreach_addcmul", "_foreach_addcmul_", "_foreach_copy_", "_foreach_div_", "_foreach_lerp_",
    "_foreach_maximum_", "_foreach_mul", "_foreach_mul_", "_foreach_neg", "_foreach_neg_",
    "_foreach_pow", "_foreach_pow_", "_foreach_reciprocal_", "_foreach_sign_", "_foreach_sqrt",
    "_foreach_sqrt_", "_foreach_sub", "_foreach_sub_",
    "abs", "add", "addcdiv", "addcmul", "addmm", "all", "allclose", "any", "argmax", "argmin",
    "argsort", "bmm", "cat", "ceil", "chunk", "clamp", "clip", "clone", "conv1d", "conv2d", "cos",
    "cosh", "cumprod", "cumsum", "detach", "diag", "div", "dot", "empty_like", "eq", "equal",
    "exp", "flatten", "flip", "floor", "fmod", "full_like", "gather", "ge", "gru", "gt",
    "index_select", "is_complex", "is_floating_point", "is_nonzero", "isclose", "isfinite",
    "isinf", "isnan", "le", "lerp", "log", "log1p", "log2", "log_softmax", "logical_and",
    "logical_not", "logical_or", "lstm", "lt", "masked_fill", "masked_select", "matmul", "max",
    "maximum", "mean", "median", "min", "minimum", "mm", "mul", "mv", "ne", "neg", "nonzero",
    "norm", "numel", "ones_like", "outer", "permute", "pow", "prod", "rand_like", "randn_like",
    "reciprocal", "relu", "relu_", "remainder", "reshape", "rnn_relu", "rnn_tanh", "round",
    "rsqrt", "sigmoid", "sign", "sin", "sinh", "softmax", "sort", "split", "sqrt", "square",
    "squeeze", "stack", "std", "sub", "sum", "t", "tanh", "topk", "transpose", "tril", "triu",
    "trunc", "unbind", "unsqueeze", "var", "where", "zeros_like",
]

# -- Tensor.X -----------------------------------------------------------------------------------
# Operators and methods, as torch.X above. `__i*__` operators and `*_` methods write `self`;
# `__setitem__` writes `self` (the index: ints, slices, None, Ellipsis, bools, lists or
# tensors; anything else is torch's TypeError/IndexError); `copy_` and `fill_` write `self`
# whatever the source; `backward` writes the `.grad` of the graph's leaves; `requires_grad_`
# and `detach_` change `self`'s autograd state (a write). `normal_`/`uniform_` are random
# (rng.py). `to` is CPU only (safe.py: `to("cuda")`, `to(0)`, `to("meta")` and
# `pin_memory=True` are refused); `cpu`, `float`, `double`, `half`, `int`, `long`, `byte`,
# `bool`, `type_as` convert dtypes on the CPU (`type`, which takes a class name, is not
# allowed). `item`, `tolist` (capped, safe.py), `__bool__`, `__float__`, `__int__`,
# `__index__`, `is_nonzero`, `equal`, `allclose` return Python values. `repeat`/`expand`/
# `expand_as` and `__getitem__` with a list index take their result size from an argument.
TENSOR_METHODS = [
    "__abs__", "__add__", "__and__", "__bool__", "__eq__", "__float__", "__floordiv__",
    "__ge__", "__getitem__", "__gt__", "__iadd__", "__iand__", "__imul__", "__index__", "__int__",
    "__invert__", "__ior__", "__ipow__", "__isub__", "__itruediv__", "__le__", "__lt__",
    "__matmul__", "__mod__", "__mul__", "__ne__", "__neg__", "__or__", "__pos__", "__pow__",
    "__radd__", "__rand__", "__rfloordiv__", "__rmatmul__", "__rmul__", "__ror__", "__rpow__",
    "__rsub__", "__rtruediv__", "__rxor__", "__setitem__", "__sub__", "__truediv__", "__xor__",
    "abs", "abs_", "add", "add_", "addcdiv", "addcdiv_", "addcmul", "addcmul_", "addmm", "all",
    "allclose", "any", "argmax", "argmin", "argsort", "backward", "bmm", "bool", "byte", "ceil",
    "chunk", "clamp", "clamp_", "clip", "clone", "conj", "contiguous", "copy_", "cos", "cpu",
    "cumsum", "detach", "detach_", "div", "div_", "dot", "double", "eq", "eq_", "equal", "exp",
    "exp_", "expand", "expand_as", "fill_", "flatten", "flip", "float", "floor", "fmod", "gather",
    "ge", "gt", "half", "index_select", "int", "is_nonzero", "isnan", "item", "le", "lerp",
    "lerp_", "log", "log_", "logical_not", "long", "lt", "masked_fill", "masked_fill_",
    "masked_select",
    "matmul", "max", "maximum", "mean", "min", "minimum", "mm", "mul", "mul_", "mv", "ne", "neg",
    "neg_", "nonzero", "norm", "normal_", "permute", "pow", "pow_", "prod",
    "reciprocal", "relu", "relu_", "remainder", "repeat", "requires_grad_", "reshape",
    "reshape_as", "round", "rsqrt", "scatter", "scatter_", "sigmoid", "sigmoid_", "sign",
    "softmax", "sort", "split", "sqrt", "sqrt_", "square", "squeeze", "std", "sub", "sub_",
    "sum", "t", "tanh", "tanh_", "to", "tolist", "topk", "transpose", "tril", "triu", "trunc",
    "type_as", "unbind", "uniform_", "unsqueeze", "var", "view", "view_as", "where", "zero_",
]

# -- F.X (torch.nn.functional) ----------------------------------------------------------------
# Layers, activations and losses: pure, except `dropout` (random, rng.py; with `inplace` a
# write), `batch_norm` in training (writes the running statistics), activations with
# `inplace=True` (a write, keyword or positional), `embedding(max_norm=)` (writes the weight),
# `normalize(out=)`. `pad`, `one_hot(num_classes=)`, the adaptive poolings' `output_size` and
# the convolutions' `padding` set their result size from an argument.
NN_FUNCTIONAL = [
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices",
    "avg_pool1d", "avg_pool2d", "batch_norm", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "conv1d", "conv2d", "cross_entropy", "dropout", "elu",
    "embedding", "gelu", "group_norm", "hardtanh", "l1_loss", "layer_norm", "leaky_relu",
    "linear", "log_softmax", "max_pool1d", "max_pool1d_with_indices", "max_pool2d",
    "max_pool2d_with_indices", "mse_loss", "nll_loss", "normalize",
    "one_hot", "pad", "relu", "relu6", "sigmoid", "silu", "smooth_l1_loss", "softmax",
    "softplus", "tanh",
]

#: Attributes whose getter (and for some, setter) may run remotely. The getters are views or
#: `grad` (pure); the setters write their tensor (`x.data = y` makes `x` alias `y`'s storage:
#: the write guard then protects that storage through `x`).
TENSOR_GETTERS = ["T", "data", "grad", "mT", "real"]
TENSOR_SETTERS = ["data", "grad"]


# -- classes ------------------------------------------------------------------------------------
# Every op is in at least one class (tests/test_ops_audit.py walks the registry): PURE, or any
# of RANDOM, ALLOCATES_BY_SIZE, RETURNS_VALUE, or writes-in-place (`fedmq.ops.writes`, by the
# op's name: a trailing underscore, `__i*__`, a setter, `__setitem__`, `backward`...). PURE
# excludes all the others. Wire names ("torch.X", "Tensor.X", "F.X", "fedmq.X").

def _names(prefix: str, names: str) -> frozenset:
    return frozenset(prefix + name for name in names.split())


#: draw random numbers: run with the principal's own generator (rng.py), never the global RNG
RANDOM = _names("torch.", "gru lstm rand_like randn_like rnn_relu rnn_tanh") | \
    _names("Tensor.", "normal_ uniform_") | \
    _names("F.", "dropout")

#: the result's size is set by a non-tensor argument (an int or a size, `num_classes`,
#: `output_size`, a padding, the `dtype` of a `*_like`, a list literal index, or how many times
#: a list names the same tensor), not bounded by the tensors the op reads: what a resource
#: pre-check must size from the result shape before running the op
ALLOCATES_BY_SIZE = _names("torch.", """
    _foreach_abs _foreach_add _foreach_addcmul _foreach_mul _foreach_neg _foreach_pow
    _foreach_sqrt _foreach_sub
    cat conv1d conv2d diag empty_like full_like ones_like rand_like randn_like stack zeros_like
""") | _names("Tensor.", "__getitem__ expand expand_as repeat") | \
    _names("F.", """adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool1d
                    adaptive_max_pool1d_with_indices adaptive_max_pool2d
                    adaptive_max_pool2d_with_indices conv1d conv2d one_hot pad""")

#: return Python values (numbers, bools, lists) in the reply, not tensors that stay on the
#: worker: what a release check looks at
RETURNS_VALUE = _names("torch.", "allclose equal is_complex is_floating_point is_nonzero numel") | \
    _names("Tensor.", """__bool__ __float__ __index__ __int__ allclose equal is_nonzero item
                         tolist""")

#: the RETURNS_VALUE ops whose value is metadata the caller's pointer already has (dtype, size)
RETURNS_METADATA = _names("torch.", "is_complex is_floating_point numel")

#: deterministic, read-only, tensor results whose size follows from the input shapes
PURE = _names("torch.", """
    abs add addcdiv addcmul addmm all any argmax argmin argsort bmm ceil chunk clamp clip clone
    cos cosh cumprod cumsum detach div dot eq exp flatten flip floor fmod gather ge gt
    index_select isclose isfinite isinf isnan le lerp log log1p log2 log_softmax logical_and
    logical_not logical_or lt masked_fill masked_select matmul max maximum mean median min
    minimum mm mul mv ne neg nonzero norm outer permute pow prod reciprocal relu remainder
    reshape round rsqrt sigmoid sign sin sinh softmax sort split sqrt square squeeze std sub sum
    t tanh topk transpose tril triu trunc unbind unsqueeze var where
""") | _names("Tensor.", """
    T __abs__ __add__ __and__ __eq__ __floordiv__ __ge__ __gt__ __invert__ __le__ __lt__
    __matmul__ __mod__ __mul__ __ne__ __neg__ __or__ __pos__ __pow__ __radd__ __rand__
    __rfloordiv__ __rmatmul__ __rmul__ __ror__ __rpow__ __rsub__ __rtruediv__ __rxor__ __sub__
    __truediv__ __xor__ abs add addcdiv addcmul addmm all any argmax argmin argsort bmm bool
    byte ceil chunk clamp clip clone conj contiguous cos cpu cumsum data detach div dot double
    eq exp flatten flip float floor fmod gather ge grad gt half index_select int isnan le lerp
    log logical_not long lt mT masked_fill masked_select matmul max maximum mean min minimum mm
    mul mv ne neg nonzero norm permute pow prod real reciprocal relu remainder reshape
    reshape_as round rsqrt scatter sigmoid sign softmax sort split sqrt square squeeze std sub
    sum t tanh to topk transpose tril triu trunc type_as unbind unsqueeze var view view_as where
""") | _names("F.", """
    avg_pool1d avg_pool2d binary_cross_entropy binary_cross_entropy_with_logits cross_entropy elu
    embedding gelu group_norm hardtanh l1_loss layer_norm leaky_relu linear log_softmax
    max_pool1d max_pool1d_with_indices max_pool2d max_pool2d_with_indices mse_loss nll_loss
    normalize relu relu6 sigmoid silu smooth_l1_loss softmax softplus tanh
""")

#: copy, rearrange, select or convert values without computing new ones (or only invert them:
#: `neg`): applied to the data owner's raw data, the result is raw data still, which
#: `--release derived` keeps in like the data itself (fedmq.store.StoreView.releasable). Any op
#: may appear here whatever its other classes.
STRUCTURAL = _names("torch.", """
    cat chunk clone detach diag flatten flip gather index_select masked_select neg permute
    reshape sort split squeeze stack t topk transpose tril triu unbind unsqueeze where
""") | _names("Tensor.", """
    T __getitem__ __neg__ __pos__ bool byte chunk clone conj contiguous cpu data detach double
    expand expand_as flatten flip float gather half index_select int long mT masked_select neg
    permute real repeat reshape reshape_as sort split squeeze t to topk transpose tril triu
    type_as unbind unsqueeze view view_as
""") | _names("F.", "embedding pad")

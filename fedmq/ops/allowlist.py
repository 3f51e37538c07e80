"""What a message may ask a worker to run. Please keep each list sorted.

A name here is the wire name of an op: "torch.X" is `torch.X`, "Tensor.X" is the tensor method
(operators included: `x + y` arrives as "Tensor.__add__"), "F.X" is `torch.nn.functional.X`.
Anything else is refused with `OpNotAllowedError` by the client and `RemoteOpNotAllowed` by the
worker. Adding an op means adding its name: the executor has no per-op code.
"""

TORCH_FUNCTIONS = [
    "_foreach_abs", "_foreach_abs_", "_foreach_add", "_foreach_add_", "_foreach_addcdiv_",
    "_foreach_addcmul", "_foreach_addcmul_", "_foreach_copy_", "_foreach_div_", "_foreach_lerp_",
    "_foreach_maximum_", "_foreach_mul", "_foreach_mul_", "_foreach_neg", "_foreach_neg_",
    "_foreach_pow", "_foreach_pow_", "_foreach_reciprocal_", "_foreach_sign_", "_foreach_sqrt",
    "_foreach_sqrt_", "_foreach_sub", "_foreach_sub_",
    "abs", "add", "addcdiv", "addcmul", "addmm", "all", "allclose", "any", "argmax", "argmin",
    "argsort", "bmm", "cat", "ceil", "chunk", "clamp", "clip", "clone", "conv1d", "conv2d", "cos",
    "cosh", "cumprod", "cumsum", "detach", "diag", "div", "dot", "empty_like", "eq", "equal",
    "exp", "flatten", "flip", "floor", "fmod", "full_like", "gather", "ge", "gt", "index_select",
    "is_complex", "is_floating_point", "is_nonzero", "isclose", "isfinite", "isinf", "isnan", "le",
    "lerp", "log", "log1p", "log2", "log_softmax", "logical_and", "logical_not", "logical_or",
    "lt", "masked_fill", "masked_select", "matmul", "max", "maximum", "mean", "median", "min",
    "minimum", "mm", "mul", "mv", "ne", "neg", "nonzero", "norm", "numel", "ones_like", "outer",
    "permute", "pow", "prod", "rand_like", "randn_like", "reciprocal", "relu", "remainder",
    "reshape", "round", "rsqrt", "sigmoid", "sign", "sin", "sinh", "softmax", "sort", "split",
    "sqrt", "square", "squeeze", "stack", "std", "sub", "sum", "t", "tanh", "topk", "transpose",
    "tril", "triu", "trunc", "unbind", "unsqueeze", "var", "where", "zeros_like",
]

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
    "neg_", "nonzero", "norm", "normal_", "numpy", "permute", "pow", "pow_", "prod",
    "reciprocal", "relu", "relu_", "remainder", "repeat", "requires_grad_", "reshape",
    "reshape_as", "round", "rsqrt", "scatter", "scatter_", "sigmoid", "sigmoid_", "sign",
    "softmax", "sort", "split", "sqrt", "sqrt_", "square", "squeeze", "std", "sub", "sub_",
    "sum", "t", "tanh", "tanh_", "to", "tolist", "topk", "transpose", "tril", "triu", "trunc",
    "type_as", "unbind", "uniform_", "unsqueeze", "var", "view", "view_as", "where", "zero_",
]

NN_FUNCTIONAL = [
    "adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "conv1d", "conv2d", "cross_entropy", "dropout", "elu",
    "embedding", "gelu", "hardtanh", "l1_loss", "layer_norm", "leaky_relu", "linear",
    "log_softmax", "max_pool1d", "max_pool2d", "mse_loss", "nll_loss", "normalize", "one_hot",
    "pad", "relu", "relu6", "sigmoid", "silu", "smooth_l1_loss", "softmax", "softplus", "tanh",
]

#: Attributes whose getter (and for some, setter) may run remotely.
TENSOR_GETTERS = ["T", "data", "grad", "mT", "real"]
TENSOR_SETTERS = ["data", "grad"]

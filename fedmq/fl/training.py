"""The worker side of a federated round: local training (`fit`) and evaluation (`evaluate`) on
the data the worker holds in its store (seed §14: PySyft's `fit_model_on_worker` /
`evaluate_model_on_worker`, run by the worker itself instead of op by op).

The data is found by tag, as `fedmq worker --dataset ...` stores it (fedmq/data/worker_data.py):
`#data #train` / `#target #train` (or `#test`), plus `#<dataset>` when the config names one.
Only names from the allowlists below become callables: the optimizer and the loss are chosen
by name, never sent as code; the model is a name in `fedmq.models.MODELS` or a model plan
(`fedmq.plans.module_plan`: allowlisted ops traced on the coordinator, sent once and cached by
digest, fedmq/fl/plan_cache.py), run by the worker's execution primitive.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from fedmq import errors, limits, principals
from fedmq.fl import plan_cache
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes
from fedmq.models import MODELS
from fedmq.fl.proximal import proximal_term
from fedmq.ops import rng
from fedmq.plans import module_plan
from fedmq.plans.messages import ModelPlanRecord
from fedmq.privacy import DPConfig, central as central_dp, local as local_dp

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
OPTIMIZER_ARGS = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "betas", "eps",
                  "amsgrad"}
LOSSES = {"nll": F.nll_loss, "cross_entropy": F.cross_entropy}
MAX_BATCHES = 1_000_000
#: the most histogram bins (classes) an evaluation counts
MAX_BINS = 1 << 16
log = logging.getLogger("fedmq.fl")


def _fail(worker_id: str, text: str) -> errors.RemoteExecutionError:
    return errors.RemoteExecutionError(text, worker=worker_id)


def find_data(worker: Any, split: str, dataset: str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) the worker holds for `split` ("train" or "test"); with a `dataset`
    key (PySyft's `dataset_key`) that the worker serves under one split only, that one."""
    found = {}
    for kind in ("data", "target"):
        query = [f"#{kind}", f"#{split}"] + ([f"#{dataset}"] if dataset else [])
        hits = worker.store.search(query)
        if not hits and dataset:
            hits = worker.store.search([f"#{kind}", f"#{dataset}"])
        if len(hits) != 1:
            what = f"{dataset} " if dataset else ""
            raise _fail(worker.id, f"worker {worker.id} holds {len(hits)} {what}{kind} tensors "
                                   f"for the {split} split, expected 1 (tags {query})")
        found[kind] = hits[0][1].obj
    data, target = found["data"], found["target"]
    if not isinstance(data, torch.Tensor) or not isinstance(target, torch.Tensor) \
            or len(data) != len(target):
        raise _fail(worker.id, f"the {split} data and targets of worker {worker.id} do not match")
    return data, target


class PlanModel:
    """A model plan with its weights, used as the training loop uses an nn.Module: calling it
    runs the train or eval op list (`train()` / `eval()`), `named_parameters()` are the
    plan's trainable entries (leaf tensors requiring grad), `state_dict()` all entries."""

    def __init__(self, rec: ModelPlanRecord, weights: dict, worker_id: str,
                 owner: str | None = None) -> None:
        self.rec, self.worker_id, self.training, self.owner = rec, worker_id, True, owner
        trainable = set(rec.parameters)
        self.tensors = [t.detach().clone().requires_grad_(name in trainable)
                        for name, t in zip(rec.state_names,
                                           module_plan.check_weights(rec, weights))]

    @property
    def batch_generic(self) -> bool:
        return self.rec.batch_generic

    def train(self, mode: bool = True) -> "PlanModel":
        self.training = mode
        return self

    def eval(self) -> "PlanModel":
        return self.train(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.guarded():
            return module_plan.run_forward(self.rec, "train" if self.training else "eval", x,
                                           self.tensors, self.worker_id)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.guarded():
            return module_plan.run_loss(self.rec, out, y, self.worker_id)

    @contextlib.contextmanager
    def guarded(self):
        """While the plan runs, it may write the model's state only as a module's forward
        pass does: BatchNorm's running statistics (`F.batch_norm` in training, into buffers
        named running_mean / running_var) and its `num_batches_tracked += 1`. Any other write
        into a parameter or buffer (a copy of the batch into a buffer, `w.copy_(x)` under
        no_grad) is refused before it runs: the state goes back to the coordinator. (A plan
        written for it can still carry data out through those statistics, its gradients, its
        loss or its metrics: which plans may run at all is the owner's `--allow-model`.)"""
        acting = principals.current()
        if acting is None:
            yield
            return
        storages = {t.untyped_storage().data_ptr(): name
                    for name, t in zip(self.rec.state_names, self.tensors)}
        buffers = set(self.rec.state_names) - set(self.rec.parameters)
        outer = acting.guard

        def guard(op: str, targets: list) -> None:
            if outer is not None:
                outer(op, targets)
            for t in targets:
                name = storages.get(t.untyped_storage().data_ptr()) \
                    if isinstance(t, torch.Tensor) else None
                if name is None or name in buffers and (
                        op == "F.batch_norm" and name.endswith(("running_mean", "running_var"))
                        or op == "Tensor.add_" and name.endswith("num_batches_tracked")):
                    continue
                raise errors.AccessDeniedError(
                    f"model plan {self.rec.name!r}: {op} would write {name}; a plan's forward "
                    f"pass writes its state only through BatchNorm's running statistics",
                    worker=self.worker_id, op=op)
        acting.guard = guard
        try:
            yield
        finally:
            acting.guard = outer

    def named_parameters(self):
        trainable = set(self.rec.parameters)
        return [(n, t) for n, t in zip(self.rec.state_names, self.tensors) if n in trainable]

    def parameters(self):
        return [t for _, t in self.named_parameters()]

    def state_dict(self) -> dict:
        return dict(zip(self.rec.state_names, self.tensors))


@contextlib.contextmanager
def on_the_data(worker_id: str, owner: str | None, what: str):
    """Training or evaluating on the owner's data: a failure, reported to a principal other
    than the owner under `--release none` or `derived`, names the op that failed and not the
    error's text (an IndexError such as "Target 3 is out of bounds" describes the data); the
    whole text goes to the worker's log. Refusals and limits (access, quota, time,
    cancellation) say what they are."""
    try:
        yield
    except (errors.AccessDeniedError, errors.QuotaExceededError, errors.TimeLimitError,
            errors.RemoteCancelledError):
        raise
    except Exception as exc:
        acting = principals.current()
        if acting is None or acting.principal == owner or \
                getattr(acting, "release", "all") == "all":
            raise
        log.warning("worker %s: %s failed for %s: %s: %s", worker_id, what, acting.principal,
                    type(exc).__name__, exc)
        op = getattr(exc, "op", None)
        raise _fail(worker_id, f"{what} failed on this worker's data"
                               f"{f' in op {op}' if op else ''} (the error text describes the "
                               f"data: it is in the worker's log)") from None


def build_model(model: Any, weights: dict, worker_id: str, owner: str | None = None,
                policy: Any = None) -> Any:
    """The model a Fit / Evaluate names: a named architecture (`fedmq.models.MODELS`) loaded
    with `weights`, or a `PlanModel` for a model plan or a digest of one cached here
    (`owner`: the data owner's principal, who is told why a plan failed; `policy`: whether
    the principal may have that plan run, `Policy.allows_model`)."""
    if isinstance(model, ModelPlanRecord) or plan_cache.is_reference(model):
        acting = principals.current()
        principal = acting.principal if acting else "me"
        rec, digest = plan_cache.resolve(model, worker_id, principal)
        if policy is not None and not policy.allows_model(principal, digest):
            log.warning("worker %s refused %s for %r (fedmq worker --allow-model %s to allow "
                        "it): %s", worker_id, digest, principal, digest,
                        module_plan.describe(rec))
            raise errors.AccessDeniedError(
                f"worker {worker_id} does not run model plan {digest} ({rec.name!r}) for "
                f"{principal!r}: under --release {policy.release} its data owner allows the "
                f"built-in models and the plans they reviewed (fedmq worker --allow-model "
                f"{digest}; the plan is described in the worker's log)", worker=worker_id)
        try:
            return PlanModel(rec, weights, worker_id, owner)
        except ValueError as exc:
            raise _fail(worker_id, str(exc)) from None
    if not isinstance(model, str):
        raise _fail(worker_id, f"model must be a name or a model plan, not "
                               f"{type(model).__name__}")
    cls = MODELS.get(model)
    if cls is None:
        raise _fail(worker_id, f"unknown model {model!r} (known: {sorted(MODELS)})")
    net = cls()
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor)
                                                for t in weights.values()):
        raise _fail(worker_id, "weights must be a dict of tensors (a state_dict)")
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise _fail(worker_id, f"weights do not fit model {model!r}: {exc}") from None
    return net


def _int(config: dict, key: str, default: int | None, worker_id: str) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise _fail(worker_id, f"{key} must be a positive integer, got {value!r}")
    return value


def make_optimizer(config: dict, params, worker_id: str) -> torch.optim.Optimizer:
    name = config.get("optimizer", "sgd")
    if name not in OPTIMIZERS:
        raise _fail(worker_id, f"unknown optimizer {name!r} (known: {sorted(OPTIMIZERS)})")
    args = dict(config.get("optimizer_args") or {})
    unknown = set(args) - OPTIMIZER_ARGS
    if unknown:
        raise _fail(worker_id, f"optimizer arguments not allowed: {sorted(unknown)}")
    for key, value in args.items():
        if key in ("nesterov", "amsgrad"):
            ok = type(value) is bool
        elif key == "betas":
            ok = isinstance(value, (list, tuple)) and len(value) == 2 and \
                all(_number(v) and 0 <= v < 1 for v in value)
        else:
            ok = _number(value) and value >= 0
        if not ok:
            raise _fail(worker_id, f"optimizer argument {key} = {value!r} is not allowed "
                                   f"(numbers >= 0; nesterov, amsgrad: booleans; betas: two "
                                   f"numbers in [0, 1))")
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    args.setdefault("lr", 0.01)
    try:
        return OPTIMIZERS[name](params, **args)
    except (ValueError, TypeError) as exc:
        raise _fail(worker_id, f"optimizer {name}: {exc}") from None


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _flag(config: dict, key: str, default: bool, worker_id: str) -> bool:
    value = config.get(key, default)
    if type(value) is not bool:
        raise _fail(worker_id, f"{key} must be true or false, got {value!r}")
    return value


def _seed(config: dict, worker_id: str) -> int:
    value = config.get("seed", 0)
    if type(value) is not int or not 0 <= value < 2 ** 62:
        raise _fail(worker_id, f"seed must be an integer in [0, 2**62), got {value!r}")
    return value


def loss_function(config: dict, worker_id: str, model: Any = None):
    """`loss(output, target, reduction=...)`: the named loss (`config["loss"]`), else the
    model plan's own loss if it has one, else "nll"."""
    name = config.get("loss")
    rec = getattr(model, "rec", None)
    if name is None and rec is not None and rec.loss is not None:
        def plan_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean"):
            if len(out) != rec.batch_size and not rec.loss_generic:
                raise _fail(worker_id, f"the loss of model plan {rec.name!r} only serves "
                                       f"batches of {rec.batch_size}")
            mean = model.loss(out, y)
            return mean * len(out) if reduction == "sum" else mean
        return plan_loss
    name = name or "nll"
    if name not in LOSSES:
        raise _fail(worker_id, f"unknown loss {name!r} (known: {sorted(LOSSES)})")
    return LOSSES[name]


def batch_indices(n: int, batch_size: int, num_batches: int, generator: torch.Generator,
                  drop_last: bool = False, shuffle: bool = True):
    """`num_batches` index batches from shuffled passes over n samples (a new permutation per
    pass, the last batch of a pass may be short, as a shuffling DataLoader gives them; with
    `drop_last` it is skipped, as `DataLoader(drop_last=True)` does; without `shuffle` every
    pass is in order)."""
    produced = 0
    last = n - batch_size + 1 if drop_last else n
    while produced < num_batches:
        perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, last, batch_size):
            yield perm[start:start + batch_size]
            produced += 1
            if produced == num_batches:
                return


def _policy(worker: Any) -> Any:
    return getattr(getattr(worker, "store", None), "policy", None)


def _owner(worker: Any) -> str | None:
    return getattr(_policy(worker), "owner", None)


def _dataset(config: dict, worker_id: str = "?") -> str | None:
    key = config.get("dataset", config.get("dataset_key"))
    if key is not None and (not isinstance(key, str) or not key):
        raise _fail(worker_id, f"dataset must be a non-empty key, got {key!r}")
    return key


def _dp(config: dict, worker_id: str) -> DPConfig | None:
    """The Fit's `dp` settings (fedmq.privacy.DPConfig.as_dict), or None; a bad value is
    refused as the other config errors are."""
    values = config.get("dp")
    if values is None:
        return None
    try:
        return DPConfig.from_dict(values)
    except (ValueError, TypeError) as exc:
        raise _fail(worker_id, str(exc)) from None


def fit(worker: Any, msg: Fit) -> FitRes:
    """Train on the worker's own data; answer with the new weights, samples seen, mean loss.
    Between two batches the message's budget is checked (fedmq.limits): past the worker's
    time limit it stops with TimeLimitError, once its sender cancels it with
    RemoteCancelledError.

    Randomness: batches are shuffled by a generator seeded with `config["seed"]`, and a model
    plan's dropout draws from one seeded with `seed + 1` (fedmq.ops.rng.drawing_from), so a
    round is reproducible. A model plan traced for one batch size only (`batch_generic`
    False) trains on full batches (the short last batch of each pass is skipped).

    Local differential privacy (`config["dp"]`, fedmq.privacy.DPConfig.as_dict() with mode
    "local"): DP-SGD through Opacus (fedmq.privacy.local: per-sample clipping to
    max_grad_norm, Gaussian noise of std noise_multiplier * max_grad_norm from OS entropy, not
    the seed); FedProx's proximal gradient is added after the noise. The metrics then carry
    "dp_sample_rate" (batch_size / examples, at most 1) and "dp_steps" (the batches trained),
    for the coordinator's accountant. What the accountant's subsampling assumes is kept from
    the coordinator when there is noise: the batches are drawn from OS entropy, not from the
    seed it chose (`shuffle` false is refused), and the reply's training loss, computed from
    the data without noise, is withheld (NaN). A model plan or a model Opacus cannot train (BatchNorm)
    is refused with the reason. Mode "central" changes nothing here (the coordinator clips
    and adds the noise)."""
    if msg.deadline and time.time() > msg.deadline:  # the round is over: do not train on it
        return FitRes(msg.round, worker.id, {}, 0, float("nan"), status="expired")
    config = msg.config if isinstance(msg.config, dict) else {}
    dp = _dp(config, worker.id)
    private = dp is not None and dp.mode == "local"
    data, target = find_data(worker, "train", _dataset(config, worker.id))
    if not len(data):
        raise _fail(worker.id, f"worker {worker.id} holds no training samples")
    model = net = build_model(msg.model, msg.weights, worker.id, _owner(worker),
                              _policy(worker))
    batch_size = _int(config, "batch_size", 32, worker.id)
    fixed = not getattr(model, "batch_generic", True)
    drop_last = fixed or _flag(config, "drop_last", False, worker.id)
    shuffle = _flag(config, "shuffle", True, worker.id)
    if fixed and batch_size != model.rec.batch_size:
        raise _fail(worker.id, f"model plan {model.rec.name!r} was traced for batches of "
                               f"{model.rec.batch_size}, the Fit asks for {batch_size}")
    passes = len(data) // batch_size if drop_last else math.ceil(len(data) / batch_size)
    epochs = _int(config, "epochs", None, worker.id)
    num_batches = (epochs * passes if epochs else _int(config, "num_batches", 10, worker.id))
    most = _int(config, "max_nr_batches", None, worker.id)
    if most is not None:
        num_batches = min(num_batches, most)
    if num_batches > MAX_BATCHES or not passes:
        raise _fail(worker.id, f"cannot train {num_batches} batches of {batch_size} on "
                               f"{len(data)} samples")
    mu = config.get("proximal_mu", 0.0) or 0.0
    if not _number(mu) or mu < 0:
        raise _fail(worker.id, f"proximal_mu must be a number >= 0, got {mu!r}")
    global_weights = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                      if mu else None)
    optimizer = make_optimizer(config, model.parameters(), worker.id)
    if private:  # DP-SGD: `model` is Opacus' wrapper, `net` the model it trains
        try:
            model, optimizer = local_dp.make_private(net, optimizer, dp.noise_multiplier,
                                                     dp.max_grad_norm, batch_size)
        except ValueError as exc:
            raise _fail(worker.id, str(exc)) from None
    loss_fn = loss_function(config, worker.id, net)
    seed = _seed(config, worker.id)
    generator = torch.Generator().manual_seed(seed)
    secret = private and dp.noise_multiplier > 0  # (without noise there is no guarantee)
    if secret:  # the batches a DP-SGD step samples are secret to the worker
        if not shuffle:
            raise _fail(worker.id, "--dp local samples its batches at random: shuffle false "
                                   "would let the sender choose them")
        generator = central_dp.secure_generator()
    started = time.perf_counter()
    model.train()
    total_loss, seen = 0.0, 0
    with rng.drawing_from(torch.Generator().manual_seed(seed + 1)), \
            on_the_data(worker.id, _owner(worker), "training"):
        for index in batch_indices(len(data), batch_size, num_batches, generator, drop_last,
                                   shuffle=shuffle):
            limits.check("Fit")
            optimizer.zero_grad()
            loss = loss_fn(model(data[index]), target[index])
            objective = loss
            if global_weights is not None and not private:  # FedProx (Li et al., 2020)
                objective = loss + proximal_term(net, global_weights, mu)
            objective.backward()
            if private:
                local_dp.step(optimizer, None if global_weights is None else
                              lambda: proximal_term(net, global_weights, mu))
            else:
                optimizer.step()
            total_loss += loss.item() * len(index)
            seen += len(index)
    weights = {name: t.detach() for name, t in net.state_dict().items()}
    metrics = {"fit_seconds": time.perf_counter() - started, "num_batches": num_batches}
    if private:
        metrics |= {"dp_sample_rate": local_dp.sample_rate(batch_size, len(data)),
                    "dp_steps": num_batches}
    # under local DP the exact training loss would be a release of the data without noise
    loss = float("nan") if secret else total_loss / seen
    return FitRes(msg.round, worker.id, weights, seen, loss, metrics=metrics)


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with its last row repeated up to `size` rows (for a plan traced at that size)."""
    if len(x) == size:
        return x
    return torch.cat([x, x[-1:].expand(size - len(x), *x.shape[1:])])


@torch.no_grad()
def evaluate(worker: Any, msg: Evaluate) -> EvaluateRes:
    """Mean loss, accuracy and prediction/target histograms on the worker's data (checking
    the message's time limit and cancellation between batches, as `fit`). `config`: split
    ("test"), dataset (a key), batch_size (128), nr_bins (default: the number of classes; at
    most MAX_BINS; labels from nr_bins up are not counted, as numpy.histogram's range).
    The loss is the sum over samples divided by their number. Accuracy and histograms are
    for classification (integer targets, an output of class scores); with float targets
    (regression) only the loss is reported (correct 0, empty histograms). A model plan traced
    for one batch size evaluates batches of that size, the last one padded (eval mode is
    per-sample)."""
    config = msg.config if isinstance(msg.config, dict) else {}
    split = config.get("split", "test")
    if split not in ("train", "test"):
        raise _fail(worker.id, f"split must be 'train' or 'test', got {split!r}")
    data, target = find_data(worker, split, _dataset(config, worker.id))
    model = build_model(msg.model, msg.weights, worker.id, _owner(worker), _policy(worker))
    fixed = None if getattr(model, "batch_generic", True) else model.rec.batch_size
    batch_size = fixed or _int(config, "batch_size", 128, worker.id)
    nr_bins = _int(config, "nr_bins", None, worker.id)
    if nr_bins is not None and nr_bins > MAX_BINS:
        raise _fail(worker.id, f"nr_bins must be at most {MAX_BINS}, got {nr_bins}")
    classes = not target.is_floating_point() and not target.is_complex()
    loss_fn = loss_function(config, worker.id, model)
    model.eval()
    total_loss, correct = 0.0, 0
    predictions = []
    out = None
    with on_the_data(worker.id, _owner(worker), "evaluation"):
        for start in range(0, len(data), batch_size):
            limits.check("Evaluate")
            x = data[start:start + batch_size]
            out = model(_padded(x, fixed) if fixed else x)[:len(x)]
            y = target[start:start + batch_size]
            total_loss += float(loss_fn(out, y, reduction="sum"))
            if classes and out.dim() == 2 and out.shape[:1] == y.shape:
                pred = out.argmax(dim=1)
                correct += int((pred == y).sum())
                predictions.append(pred)
            else:
                classes = False
    n = len(data)
    mean = total_loss / n if n else float("nan")
    if not classes:
        return EvaluateRes(msg.round, worker.id, mean, 0, n, [], [])
    bins = nr_bins or max(int(out.shape[1]) if out is not None else 0,
                          int(target.max()) + 1 if n else 0)
    if bins > MAX_BINS:
        raise _fail(worker.id, f"labels reach {bins - 1}: more than {MAX_BINS} classes to "
                               f"count (give nr_bins)")
    pred_all = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
    return EvaluateRes(msg.round, worker.id, mean, correct, n,
                       _histogram(pred_all, bins), _histogram(target, bins))


def _histogram(values: torch.Tensor, bins: int) -> list:
    """Counts of 0 .. bins-1 in `values` (others, negative ones included, not counted)."""
    inside = values[(values >= 0) & (values < bins)]
    return torch.bincount(inside, minlength=bins).tolist()

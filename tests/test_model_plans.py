"""Model plans as faithful as PyTorch (issue 14, deliverable 3): for each model of a small zoo,
SGD steps done by running the plan's train op list (`module_plan.run_forward` + `run_loss` +
backward + the same optimizer over the state tensors) leave the weights and every buffer
(BatchNorm's running statistics and `num_batches_tracked`) where the same steps in plain
PyTorch leave them, and the eval op list gives the module's eval output. Dropout compares
exactly: both sides run from the same global RNG state (outside a worker message random ops
use the global RNG, fedmq/ops/rng.py). Also the `torch.jit.trace`d versions of some models,
read by fedmq/plans/torchscript.py."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmq.errors import OpNotAllowedError
from fedmq.plans import module_plan
from fedmq.plans.torchscript import TorchScriptError

TOL = 1e-6
STEPS = 3


# -- the zoo --------------------------------------------------------------------------------------

def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 4))


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus the input (a residual connection), then relu."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                  nn.LeakyReLU(0.1))
        self.block = Block(8)
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.SiLU(),
                                  nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(0.2), nn.Linear(8, 5))

    def forward(self, x):
        return F.log_softmax(self.head(self.block(self.stem(x))), dim=1)


class TextClassifier(nn.Module):
    """Embedding + LSTM or GRU (batch_first) + Linear on the last step."""

    def __init__(self, rnn: type, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(40, 12)
        self.rnn = rnn(12, 16, num_layers=layers, batch_first=True, dropout=dropout)
        self.fc = nn.Linear(16, 3)

    def forward(self, tokens):
        out, _ = self.rnn(self.embedding(tokens))
        return self.fc(F.leaky_relu(out[:, -1]))


class Bidirectional(nn.Module):
    """A bidirectional two-layer LSTM (dropout between the layers) feeding an nn.RNN (relu)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(40, 12)
        self.lstm = nn.LSTM(12, 8, num_layers=2, bidirectional=True, batch_first=True,
                            dropout=0.3)
        self.rnn = nn.RNN(16, 8, batch_first=True, nonlinearity="relu")
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        out, _ = self.lstm(self.embedding(tokens))
        out, _ = self.rnn(out)
        return self.fc(out[:, -1])


class Norms(nn.Module):
    """Conv1d, GroupNorm, LayerNorm, 1-d pooling (max, avg, adaptive) and activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.group = nn.GroupNorm(2, 8)
        self.pool = nn.Sequential(nn.MaxPool1d(2), nn.AvgPool1d(2))
        self.layer = nn.LayerNorm(8)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = self.pool(F.gelu(self.group(self.conv(x))))
        h = torch.cat([F.adaptive_avg_pool1d(h, 1), F.adaptive_max_pool1d(h, 1)], 1)
        h = torch.tanh(self.layer(h.flatten(1).view(-1, 2, 8)).flatten(1))
        return self.fc(h)


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 10), nn.Linear(10, 4)

    def forward(self, x):
        return F.softmax(self.fc2(torch.sigmoid(self.fc1(x))), dim=-1)


def resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=10)


def _classes(n: int, batch: int):
    return lambda g: torch.randint(0, n, (batch,), generator=g)


#: name -> (model factory, input maker, target maker, loss, lr): each maker takes a generator
ZOO = {
    "mlp_batchnorm_dropout": (
        mlp, lambda g: torch.randn(8, 3, 4, generator=g), _classes(4, 8),
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1), 0.1),
    "residual_cnn": (
        ResidualCNN, lambda g: torch.randn(4, 3, 12, 12, generator=g), _classes(5, 4),
        F.nll_loss, 0.05),
    "resnet18": (
        resnet18, lambda g: torch.randn(2, 3, 32, 32, generator=g), _classes(10, 2),
        F.cross_entropy, 0.01),
    "lstm_classifier": (
        lambda: TextClassifier(nn.LSTM, 2, dropout=0.25), lambda g: torch.randint(
            0, 40, (5, 7), generator=g), _classes(3, 5), F.cross_entropy, 0.1),
    "gru_classifier": (
        lambda: TextClassifier(nn.GRU, 1), lambda g: torch.randint(0, 40, (5, 7), generator=g),
        lambda g: torch.rand(5, 3, generator=g), F.mse_loss, 0.1),
    "bidirectional_lstm_rnn": (
        Bidirectional, lambda g: torch.randint(0, 40, (5, 7), generator=g), _classes(3, 5),
        F.cross_entropy, 0.1),
    "groupnorm_layernorm": (
        Norms, lambda g: torch.randn(4, 4, 8, generator=g),
        lambda g: (torch.rand(4, 3, generator=g) > 0.5).float(),
        F.binary_cross_entropy_with_logits, 0.1),
    "softmax_regressor": (
        Regressor, lambda g: torch.randn(6, 6, generator=g),
        lambda g: torch.rand(6, 4, generator=g), F.l1_loss, 0.5),
}
#: the models also checked as torch.jit.trace results
TRACED = ["mlp_batchnorm_dropout", "residual_cnn", "resnet18", "lstm_classifier",
          "bidirectional_lstm_rnn", "groupnorm_layernorm"]


# -- the comparison -------------------------------------------------------------------------------

def _batches(name: str, n: int):
    _, make_x, make_y, _, _ = ZOO[name]
    g = torch.Generator().manual_seed(1234)
    return [(make_x(g), make_y(g)) for _ in range(n)]


def _models(name: str):
    torch.manual_seed(0)
    model = ZOO[name][0]()
    return model, copy.deepcopy(model)


def _optimizer(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool((a - b).abs().max() <= TOL) if a.numel() else True


def _train_both(name: str, plan_source: nn.Module | None = None):
    """STEPS SGD steps of model `name` in PyTorch and through its model plan, from the same
    weights on the same batches under the same RNG; (reference model, plan state, record)."""
    reference, twin = _models(name)
    _, _, _, loss_fn, lr = ZOO[name]
    batches = _batches(name, STEPS + 1)
    example = batches[0][0]
    # (tracing runs the model: a copy, so that the twin's buffers start where the reference's do)
    source = plan_source(copy.deepcopy(twin)) if plan_source is not None else twin
    rec = module_plan.model_plan(source, example, loss_fn=loss_fn,
                                 example_target=batches[0][1])
    state_dict = twin.state_dict(keep_vars=True)
    state = [state_dict[n] for n in rec.state_names]
    params = [state_dict[n] for n in rec.parameters]
    assert params == [p for p in twin.parameters()]  # every trainable entry, in order

    reference.train()
    opt_ref, opt_plan = _optimizer(reference.parameters(), lr), _optimizer(params, lr)
    for step, (x, y) in enumerate(batches[:STEPS]):
        torch.manual_seed(100 + step)
        opt_ref.zero_grad()
        loss_ref = loss_fn(reference(x), y)
        loss_ref.backward()
        opt_ref.step()

        torch.manual_seed(100 + step)
        opt_plan.zero_grad()
        out = module_plan.run_forward(rec, "train", x, state, "me")
        loss_plan = module_plan.run_loss(rec, out, y, "me")
        loss_plan.backward()
        opt_plan.step()
        assert _close(loss_plan.detach(), loss_ref.detach()), (step, loss_plan, loss_ref)
    return reference, state, rec, batches[STEPS][0]


def _check(reference, state, rec, x_eval):
    ref_state = reference.state_dict()
    for name, t in zip(rec.state_names, state):
        assert _close(t.detach(), ref_state[name]), name
    counters = [n for n in rec.state_names if n.endswith("num_batches_tracked")]
    assert all(int(ref_state[n]) == STEPS for n in counters)
    reference.eval()
    with torch.no_grad():
        expected = reference(x_eval)
        got = module_plan.run_forward(rec, "eval", x_eval, state, "me")
        again = module_plan.run_forward(rec, "eval", x_eval, state, "me")
    assert _close(got, expected) and torch.equal(got, again)  # no dropout, running stats
    assert got.grad_fn is None  # under no_grad, as the module: no autograd history
    for name, t in zip(rec.state_names, state):  # eval updates no buffer
        assert _close(t.detach(), ref_state[name]), name


@pytest.mark.parametrize("name", list(ZOO))
def test_training_through_the_plan_is_training_the_module(name):
    reference, state, rec, x_eval = _train_both(name)
    _check(reference, state, rec, x_eval)


def _jit_trace(model: nn.Module) -> torch.jit.ScriptModule:
    """The model traced in train mode (so that the graph counts BatchNorm batches); the plan
    overrides the graph's train flags in each mode."""
    _, make_x, _, _, _ = ZOO[_jit_trace.name]
    example = make_x(torch.Generator().manual_seed(0))
    model.train()
    traced = torch.jit.trace(model, example, check_trace=False)
    assert isinstance(traced, torch.jit.ScriptModule)
    return traced


@pytest.mark.parametrize("name", TRACED)
def test_training_through_the_plan_of_a_traced_module(name):
    _jit_trace.name = name
    reference, state, rec, x_eval = _train_both(name, _jit_trace)
    _check(reference, state, rec, x_eval)


def test_a_module_traced_in_eval_mode_still_counts_batches_in_train_mode():
    """An eval-mode trace has no `num_batches_tracked += 1`: the train plan adds it."""
    def eval_trace(model):
        model.eval()
        return torch.jit.trace(model, _batches("mlp_batchnorm_dropout", 1)[0][0])
    reference, state, rec, x_eval = _train_both("mlp_batchnorm_dropout", eval_trace)
    _check(reference, state, rec, x_eval)


# -- modes ------------------------------------------------------------------------------------

def test_the_plans_honour_train_and_eval():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(8, 3, 4)
    rec = module_plan.model_plan(model, x)
    train_ops = [op.op for op in rec.train.ops]
    eval_ops = [op.op for op in rec.eval.ops]
    assert "Tensor.add_" in train_ops and "Tensor.add_" not in eval_ops  # num_batches_tracked
    batch_norm = [op for op in rec.eval.ops if op.op == "F.batch_norm"]
    assert len(batch_norm) == 1 and batch_norm[0].kwargs["training"] is False  # running stats
    dropout = [op for op in rec.eval.ops if op.op == "F.dropout"]
    assert [op.kwargs["training"] for op in dropout] == [False]
    state = [t.detach().clone() for t in model.state_dict().values()]
    before = [t.clone() for t in state]
    with torch.no_grad():
        outs = [module_plan.run_forward(rec, "eval", x, state, "me") for _ in range(2)]
    assert torch.equal(outs[0], outs[1])  # dropout is off
    assert all(torch.equal(a, b) for a, b in zip(state, before))
    with torch.no_grad():
        torch.manual_seed(1)
        first = module_plan.run_forward(rec, "train", x, state, "me")
        second = module_plan.run_forward(rec, "train", x, state, "me")
    assert not torch.equal(first, second)  # dropout draws
    names = rec.state_names
    assert int(state[names.index("2.num_batches_tracked")]) == 2
    assert not torch.equal(state[names.index("2.running_mean")],
                           before[names.index("2.running_mean")])


def test_a_cumulative_batch_norm_is_refused_not_frozen():
    """momentum=None averages with 1/num_batches_tracked, a Python float read from a buffer:
    recording it would freeze the first step's factor."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=None))
    with pytest.raises(module_plan.PlanBuildError, match="__float__"):
        module_plan.model_plan(model, torch.randn(5, 3))


def test_an_unsupported_torchscript_node_is_a_clear_error():
    traced = torch.jit.trace(nn.Sequential(nn.Linear(4, 4), nn.Upsample(scale_factor=2)),
                             torch.zeros(1, 1, 2, 4))
    with pytest.raises(TorchScriptError, match="aten::upsample_nearest2d has no public torch"):
        module_plan.model_plan(traced, torch.zeros(1, 1, 2, 4))


def test_a_torchscript_node_off_the_allowlist_is_refused_by_name():
    traced = torch.jit.trace(nn.EmbeddingBag(10, 4), torch.randint(0, 10, (2, 3)))
    with pytest.raises(OpNotAllowedError, match="embedding_bag is not on fedmq's allowlist"):
        module_plan.model_plan(traced, torch.randint(0, 10, (2, 3)))

"""The client's one shape engine (fedmq.shapes): result metadata on meta tensors, one bounded
LRU cache, for pointers, plans and SMPC."""
from __future__ import annotations

import pytest
import torch

import fedmq
from fedmq import messages as m, shapes
from fedmq.plans.messages import PlanRecord
from fedmq.shapes import Alias, LRUCache, TensorMeta
from fedmq.smpc.provider import share_shapes


def _real_leaves(value):
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _real_leaves(v)]


@pytest.mark.parametrize("name, make_args, kwargs", [
    ("torch.add", lambda: (torch.ones(3, 1), torch.ones(4)), {}),
    ("torch.matmul", lambda: (torch.ones(5, 3), torch.ones(3, 2)), {}),
    ("torch.max", lambda: (torch.randn(4, 6),), {"dim": 0}),           # a namedtuple of two
    ("torch.sum", lambda: (torch.ones(2, 3, 4, dtype=torch.int64),), {"dim": (0, 2)}),
    ("torch.cat", lambda: ([torch.ones(2, 3), torch.ones(1, 3)],), {"dim": 0}),
    ("Tensor.view", lambda: (torch.ones(2, 6), 3, -1), {}),
    ("F.conv2d", lambda: (torch.ones(2, 1, 28, 28), torch.ones(32, 1, 3, 3)), {"stride": 2}),
    ("F.linear", lambda: (torch.ones(8, 20, requires_grad=True), torch.ones(5, 20)), {}),
    ("torch.split", lambda: (torch.ones(7, 2), 3), {}),                 # a tuple of three
    ("Tensor.__getitem__", lambda: (torch.ones(5, 4), (slice(1, 4), 2)), {}),
])
def test_specs_match_running_the_op_on_real_tensors(name, make_args, kwargs):
    args = make_args()
    spec = shapes.op_spec(name, args, kwargs)
    real = _real_leaves(fedmq.ops.lookup(name).fn(*args, **kwargs))
    assert [(leaf.shape, leaf.dtype, leaf.requires_grad) for leaf in spec.leaves] == \
        [(tuple(t.shape), t.dtype, t.requires_grad) for t in real]
    assert all(type(leaf) is TensorMeta for leaf in spec.leaves)


def test_a_tuple_result_keeps_its_structure():
    spec = shapes.op_spec("torch.max", (torch.randn(4, 6),), {"dim": 0})
    kind, parts = spec.template
    assert kind is torch.return_types.max and list(parts) == list(spec.leaves)
    assert [leaf.dtype for leaf in spec.leaves] == [torch.float32, torch.int64]


def test_an_in_place_result_is_an_alias_of_its_input():
    x, y = torch.ones(3), torch.ones(3)
    spec = shapes.op_spec("Tensor.add_", (y, x))
    assert spec.leaves == (Alias(0, False),)
    assert shapes.op_spec("Tensor.add_", (y, x), aliases=False).leaves == (
        TensorMeta((3,), torch.float32, False),)


def test_inputs_known_by_metadata_only():
    a, b = TensorMeta((4, 3), torch.int64), TensorMeta((3, 7), torch.int64)
    assert shapes.op_spec("torch.matmul", (a, b)).leaves[0].shape == (4, 7)
    assert share_shapes("matmul", {"a": [4, 3], "b": [3, 7]}) == [(4, 3), (3, 7), (4, 7)]
    assert share_shapes("conv2d", {"a": [1, 2, 8, 8], "b": [4, 2, 3, 3], "padding": 1}) == [
        (1, 2, 8, 8), (4, 2, 3, 3), (1, 4, 8, 8)]
    assert share_shapes("trunc", {"shape": [5], "divisor": 1000}) == [(5,), (5,)]


def test_what_meta_tensors_cannot_answer_is_none_or_the_ops_own_error():
    assert shapes.op_spec("torch.nonzero", (torch.ones(3),)) is None  # data-dependent shape
    assert shapes.op_spec("Tensor.item", (torch.ones(()),)) is None    # needs the data
    assert shapes.op_spec("torch.numel", (torch.ones(2),)) is None     # a Python value
    with pytest.raises(RuntimeError, match="broadcast"):
        shapes.op_spec("torch.add", (torch.ones(3), torch.ones(4)), strict=True)
    with pytest.raises(RuntimeError, match="broadcast"):  # also when the None is cached
        shapes.op_spec("torch.add", (torch.ones(3), torch.ones(4)), strict=True)
    with pytest.raises(ValueError, match="does not return tensors"):
        shapes.op_spec("torch.numel", (torch.ones(2),), strict=True)


def test_the_cache_answers_repeated_calls():
    shapes.CACHE.clear()
    first = shapes.op_spec("torch.mul", (torch.ones(2, 2), 3))
    assert len(shapes.CACHE) == 1
    assert shapes.op_spec("torch.mul", (torch.zeros(2, 2), 3)) is first  # same metadata
    assert shapes.op_spec("torch.mul", (torch.zeros(2, 3), 3)) is not first
    assert shapes.op_spec("torch.mul", (torch.zeros(2, 2), 3.0)) is not first  # int vs float
    assert len(shapes.CACHE) == 3


def test_lru_cache_never_grows_past_its_limit():
    cache = LRUCache(3)
    for i in range(10):
        cache.put(i, str(i))
        assert len(cache) <= 3
    assert [k for k in range(10) if k in cache] == [7, 8, 9]
    assert cache.get(7) == "7"  # used: now the most recent
    cache.put(10, "10")
    assert [k for k in range(11) if k in cache] == [7, 9, 10]
    assert cache.get(8, "gone") == "gone"
    with pytest.raises(ValueError):
        LRUCache(0)


def test_the_engines_cache_never_grows_past_its_limit(monkeypatch):
    monkeypatch.setattr(shapes.CACHE, "limit", 8)
    shapes.CACHE.clear()
    for n in range(1, 40):
        shapes.op_spec("torch.neg", (torch.ones(n),))
        shapes.op_spec("torch.add", (TensorMeta((n, 1), torch.float32), torch.ones(n)))
        assert len(shapes.CACHE) <= 8
    assert shapes.op_spec("torch.neg", (torch.ones(39),)).leaves[0].shape == (39,)
    shapes.CACHE.clear()


def test_pointer_ops_use_the_same_cache(hook):
    bob = fedmq.VirtualWorker(hook, id="bob")
    shapes.CACHE.clear()
    x = torch.ones(3, 4).send(bob)
    y = x.sum(dim=1)
    assert tuple(y.shape) == (3,) and len(shapes.CACHE) == 1
    x.sum(dim=1)
    assert len(shapes.CACHE) == 1
    assert y.get().tolist() == [4.0, 4.0, 4.0]


def _dot_plan():
    # y = (x * w).sum(1) with w a state tensor; also returns x.nonzero() when asked
    return PlanRecord(1, "p", [1], [2], [], [
        m.Command("torch.mul", (m.Ref(1), m.Ref(2)), {}, [3]),
        m.Command("torch.sum", (m.Ref(3),), {"dim": 1}, [4])], (m.Ref(4), m.Ref(3)))


def test_plan_specs_match_running_the_plan():
    record, w = _dot_plan(), torch.ones(5, requires_grad=True)
    x = torch.ones(2, 5)
    specs = shapes.plan_specs(record, [w], (x,))
    real = [(x * w).sum(1), x * w]
    assert specs == tuple((tuple(t.shape), t.dtype, t.requires_grad) for t in real)
    token = object()
    shapes.CACHE.clear()
    assert shapes.plan_specs(record, lambda: [w], (x,), token) == specs
    assert shapes.plan_specs(record, lambda: pytest.fail("cached: state not read"), (x,),
                             token) == specs
    record.ops.append(m.Command("torch.nonzero", (m.Ref(1),), {}, [5]))
    assert shapes.plan_specs(record, [w], (x,)) is None  # data-dependent: ask the worker

"""Private rounds (issue 16) through the coordinator on in-process workers: secure aggregation
(SecAgg+, additive sharing) gives FedAvg's model within the quantization error while the
coordinator never holds an update; workers dropping at each stage; differential privacy
(central, distributed, local) and its accountant; what does not compose is refused."""
from __future__ import annotations

import asyncio
import math

import pytest
import torch

from fedmq import serde
from fedmq.fl.connections import InProcessConnection
from fedmq.fl.coordinator import Coordinator, TrainConfig
from fedmq.fl.messages import Fit, FitRes
from fedmq.fl.secure import PrivateRounds, make_private_rounds
from fedmq.secagg import quantize, secaggplus
from fedmq.strategy import FedAvg
from fedmq.strategy.robust import FedMedian

from fl_helpers import data_worker, tensors_in

#: the quantization step of an update element, and what a few rounds of training on slightly
#: different weights may make of it
TOLERANCE = 1e-5


def small_config(**changes) -> TrainConfig:
    base = dict(rounds=2, batch_size=8, num_batches=2, lr=0.05, eval_every=0,
                round_timeout=60, seed=3, model="mnist-logreg")
    return TrainConfig(**(base | changes))


def make_workers(n: int = 3, sizes: list[int] | None = None) -> dict:
    sizes = sizes or [48] * n
    return {f"w{i}": data_worker(f"w{i}", n=sizes[i], seed=i + 1) for i in range(n)}


def run(privacy, workers=None, cfg=None, strategy=None, until=None):
    workers = workers if workers is not None else make_workers()
    train = [w for w in workers if not w.startswith("agg")]
    coord = Coordinator(InProcessConnection(workers), train, cfg or small_config(),
                        echo=lambda line: None, privacy=privacy, strategy=strategy)
    history = asyncio.run(coord.run(until=until))
    return coord, history


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


class Capture:
    """An in-process worker whose replies (what the coordinator receives) are all kept."""

    def __init__(self, worker, frames: list) -> None:
        self.worker, self.frames, self.id = worker, frames, worker.id

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        reply = self.worker.handle_frame(frame, login)
        self.frames.append(bytes(reply))
        return reply

    def __getattr__(self, name):
        return getattr(self.worker, name)


class FailOn:
    """An in-process worker that answers messages of type `kind` with an error (a worker that
    died at that stage, as far as the coordinator can tell)."""

    def __init__(self, worker, kind: str) -> None:
        self.worker, self.kind, self.id = worker, kind, worker.id

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        msg = serde.decode(frame).message
        if type(msg).__name__ == self.kind:
            raise ConnectionError(f"{self.id} is gone")
        return self.worker.handle_frame(frame, login)

    def __getattr__(self, name):
        return getattr(self.worker, name)


def reply_of(frame: bytes):
    decoded = serde.decode(frame)
    return getattr(decoded, "message", decoded)


# -- secure aggregation gives FedAvg's model ---------------------------------------------------

def test_secaggplus_rounds_equal_fedavg_within_quantization():
    plain, _ = run(None)
    secure, history = run(make_private_rounds("secagg+", seed=3))
    assert all(r.status == "ok" and not r.failed for r in history)
    assert all(set(r.workers) == {"w0", "w1", "w2"} for r in history)
    assert max_diff(plain.weights, secure.weights) < TOLERANCE
    # the run ended its session (SecAggEnd): the workers keep nothing of it
    session, = secure.privacy.aggregator.ended_sessions
    assert not [key for key in secaggplus._STATES if key[2] == session]
    assert not [key for key in secaggplus._CHANNELS if key[2] == session]


def test_secaggplus_weights_by_examples_like_fedavg():
    sizes = [16, 48, 96]
    plain, _ = run(None, make_workers(sizes=sizes), small_config(rounds=1))
    secure, history = run(make_private_rounds("secagg+", seed=3), make_workers(sizes=sizes),
                          small_config(rounds=1))
    assert history[0].status == "ok"
    assert {w: v["samples"] for w, v in history[0].workers.items()} == \
        {w: v["samples"] for w, v in plain.history[0].workers.items()}
    assert max_diff(plain.weights, secure.weights) < TOLERANCE


def test_coordinator_never_holds_an_update():
    """Every frame the coordinator receives kept: no float tensor in them equals any worker's
    trained weights (which plain FedAvg receives), and each int64 vector it gets is
    uncorrelated with the worker's encoded update."""
    plain_frames: list = []
    ws = {k: Capture(w, plain_frames) for k, w in make_workers().items()}
    run(None, ws, small_config(rounds=1))
    plain_weights = [t for f in plain_frames for v in [reply_of(f)]
                     for t in tensors_in(getattr(v, "value", v), []) if t.is_floating_point()]
    assert plain_weights  # FedAvg receives the updates
    frames: list = []
    ws = {k: Capture(w, frames) for k, w in make_workers().items()}
    coord, history = run(make_private_rounds("secagg+", seed=3), ws, small_config(rounds=1))
    assert history[0].status == "ok"
    received = [t for f in frames for v in [reply_of(f)]
                for t in tensors_in(getattr(v, "value", v), [])]
    for t in received:
        for w in plain_weights:
            assert not (t.shape == w.shape and torch.allclose(t.double(), w.double())), \
                "the coordinator received a worker's weights"
    masked = [t for t in received if t.dtype == torch.int64 and t.numel() > 1000]
    assert len(masked) == 3
    # what a worker encodes: its update, in the ring; the masked vector looks uniform
    for y in masked:
        top = (y.double() / 2.0 ** 63)
        assert abs(float(top.mean())) < 0.1 and float(top.abs().mean()) > 0.3


# -- workers dropping out --------------------------------------------------------------------

def test_worker_dropping_after_masking_is_still_counted():
    ws = make_workers()
    ws["w1"] = FailOn(ws["w1"], "SecAggUnmask")
    plain, _ = run(None, make_workers(), small_config(rounds=1))
    secure, history = run(make_private_rounds("secagg+", seed=3), ws, small_config(rounds=1))
    assert history[0].status == "ok", history[0].failed
    assert set(history[0].workers) == {"w0", "w1", "w2"}
    assert max_diff(plain.weights, secure.weights) < TOLERANCE


def test_worker_dropping_before_masking_is_left_out():
    ws = make_workers()
    ws["w2"] = FailOn(ws["w2"], "Fit")
    two = make_workers()
    del two["w2"]
    plain, _ = run(None, two, small_config(rounds=1))
    secure, history = run(make_private_rounds("secagg+", seed=3), ws, small_config(rounds=1))
    record = history[0]
    assert record.status == "ok", record.failed
    assert set(record.workers) == {"w0", "w1"} and "w2" in record.failed
    assert max_diff(plain.weights, secure.weights) < TOLERANCE


def test_too_many_dropouts_fail_the_round_and_keep_the_model():
    ws = make_workers()
    ws["w1"] = FailOn(ws["w1"], "Fit")
    ws["w2"] = FailOn(ws["w2"], "Fit")
    coord, history = run(make_private_rounds("secagg+", seed=3), ws, small_config(rounds=1))
    assert history[0].status == "failed"
    # found by review: w0 answered in time; the round, not w0, failed to count it
    assert "SecureAggregationError" in history[0].failed["*"]
    assert "could not be unmasked" in history[0].failed["w0"]
    from fedmq.fl.config import initial_weights
    assert max_diff(coord.weights, initial_weights("mnist-logreg", 3)) == 0


# -- what does not compose -------------------------------------------------------------------

def test_strategies_needing_each_update_are_refused():
    with pytest.raises(ValueError, match="FedMedian needs every worker's update"):
        Coordinator(InProcessConnection(make_workers()), ["w0", "w1", "w2"], small_config(),
                    strategy=FedMedian(), privacy=make_private_rounds("secagg+"),
                    echo=lambda line: None)


# -- differential privacy ----------------------------------------------------------------------

def dp(mode: str, z: float, c: float, **kw):
    from fedmq.privacy.config import DPConfig
    return DPConfig(mode=mode, noise_multiplier=z, max_grad_norm=c, **kw)


def update_norm(new: dict, old: dict, names=None) -> float:
    names = names or [n for n in new if new[n].is_floating_point()]
    return float(torch.cat([(new[n].double() - old[n].double()).reshape(-1)
                            for n in names]).norm())


def test_central_dp_without_noise_or_clipping_is_fedavg_bitwise():
    plain, _ = run(None)
    coord, history = run(PrivateRounds(dp=dp("central", 0.0, math.inf)))
    assert all(r.status == "ok" for r in history)
    assert max_diff(plain.weights, coord.weights) == 0


def test_central_dp_clips_each_update_and_adds_the_noise():
    from fedmq.fl.config import initial_weights
    start = initial_weights("mnist-logreg", 3)
    clipped, _ = run(PrivateRounds(dp=dp("central", 0.0, 0.05)), cfg=small_config(rounds=1))
    assert update_norm(clipped.weights, start) <= 0.05 + 1e-6  # a mean of clipped updates
    plain, _ = run(None, cfg=small_config(rounds=1))
    assert update_norm(plain.weights, start) > 0.1  # so the clipping did cut
    noisy, _ = run(PrivateRounds(dp=dp("central", 1.0, 0.05)), cfg=small_config(rounds=1))
    # noise of std z*C/m = 0.05/3 per element on the 7 850 trainable entries
    residual = torch.cat([(noisy.weights[n].double() - clipped.weights[n].double()).reshape(-1)
                          for n in noisy.weights])
    assert float(residual.std()) == pytest.approx(0.05 / 3, rel=0.1)


def test_central_dp_epsilon_is_the_accountants_every_round():
    from fedmq.privacy.accountant import CentralAccountant
    coord, history = run(PrivateRounds(dp=dp("central", 1.1, 1.0, delta=1e-5)),
                         cfg=small_config(rounds=3))
    reference = CentralAccountant(1.1, 1e-5)
    for record in history:
        reference.step(1.0)  # every worker sampled
        assert record.epsilon == pytest.approx(reference.epsilon(), rel=1e-9)
    assert history[0].epsilon < history[1].epsilon < history[2].epsilon


def test_distributed_dp_with_secaggplus():
    from fedmq.fl.config import initial_weights
    start = initial_weights("mnist-logreg", 3)
    plain, _ = run(None, cfg=small_config(rounds=1))
    exact, history = run(make_private_rounds("secagg+", seed=3,
                                             dp=dp("central", 0.0, math.inf)),
                         cfg=small_config(rounds=1))
    assert history[0].status == "ok"
    assert max_diff(plain.weights, exact.weights) < TOLERANCE  # equal sizes: equal weights
    clipped, _ = run(make_private_rounds("secagg+", seed=3, dp=dp("central", 0.0, 0.05)),
                     cfg=small_config(rounds=1))
    assert update_norm(clipped.weights, start) <= 0.05 + 1e-4
    noisy, history = run(make_private_rounds("secagg+", seed=3, dp=dp("central", 1.0, 0.05)),
                         cfg=small_config(rounds=1))
    assert history[0].epsilon is not None and history[0].epsilon < math.inf
    residual = torch.cat([(noisy.weights[n].double() - clipped.weights[n].double()).reshape(-1)
                          for n in noisy.weights])
    # each of the 3 workers adds std z*C/sqrt(2) (calibrated for the 2 contributors SecAgg+
    # needs at least): on the mean, std z*C*sqrt(3)/(3*sqrt(2)) >= the central z*C/3
    assert float(residual.std()) == pytest.approx(0.05 * math.sqrt(3) / (3 * math.sqrt(2)),
                                                  rel=0.1)


def test_local_dp_epsilon_is_the_accountants_for_each_worker():
    from fedmq.privacy.accountant import LocalAccountants
    cfg = small_config(rounds=2, batch_size=8, num_batches=3)
    coord, history = run(PrivateRounds(dp=dp("local", 1.0, 1.0, delta=1e-5)), cfg=cfg)
    assert all(r.status == "ok" for r in history), history[0].failed
    reference = LocalAccountants(1.0, 1e-5)
    for record in history:
        for worker in record.workers:
            reference.step(worker, 8 / 48, 3)
        assert record.epsilon == pytest.approx(reference.max_epsilon(), rel=1e-9)


# -- the data owner's side ---------------------------------------------------------------------

def test_a_worker_can_require_secure_aggregation():
    """`fedmq worker --require-secure-aggregation`: a coordinator that leaves secure
    aggregation out gets a refusal, not the update; with it, the round runs."""
    import dataclasses

    from fedmq.engine import RequestEngine
    from fedmq.fl.coordinator import RunRefused
    from fedmq.transport.local import LocalTransport

    def strict_workers():
        ws = make_workers()
        for w in ws.values():
            w.policy = dataclasses.replace(w.policy, require_secure_aggregation=True)
        return ws

    def engine(ws):  # a coordinator that is not the workers' owner
        return RequestEngine(LocalTransport(ws, principal="coord"), sender="coordinator",
                             timeout=None)

    ws = strict_workers()
    coord = Coordinator(engine(ws), list(ws), small_config(rounds=1), echo=lambda line: None)
    with pytest.raises(RunRefused, match="require-secure-aggregation"):
        asyncio.run(coord.run())
    ws = strict_workers()
    coord = Coordinator(engine(ws), list(ws), small_config(rounds=1), echo=lambda line: None,
                        privacy=make_private_rounds("secagg+", seed=3))
    history = asyncio.run(coord.run())
    assert history[0].status == "ok" and len(history[0].workers) == 3


def test_dp_refuses_models_whose_buffers_it_cannot_cover():
    """Found by review: central DP clipped and noised the trainable parameters only, and let
    BatchNorm's running statistics (computed from the data) through as they were."""
    weights = {"w": torch.zeros(3), "bn.running_mean": torch.zeros(3),
               "bn.num_batches_tracked": torch.tensor(0)}
    rounds = PrivateRounds(dp=dp("central", 1.0, 1.0))
    with pytest.raises(ValueError, match="running statistics"):
        rounds.check_model(weights, {"w"})
    rounds.check_model({"w": torch.zeros(3), "n": torch.tensor(0)}, {"w"})  # ints are counts
    PrivateRounds().check_model(weights, {"w"})  # no DP: nothing to cover


def test_found_by_review_central_dp_divides_by_the_workers_sampled():
    """Found by review (twice): the noise z*C/m assumed each worker moves the mean by C/m,
    but the mean was sample-weighted (C*n_i/N), then divided by whoever answered (one worker
    less moves it by up to 2C/m). DP-FedAvg's estimator divides the sum of the clipped
    updates by the m workers sampled, whatever their sizes and whoever answered."""
    from fedmq.strategy import FitResult
    rounds = PrivateRounds(dp=dp("central", 0.0, 0.5))
    g = {"w": torch.zeros(4, dtype=torch.float64)}
    ones = {w: FitResult(w, {"w": torch.full((4,), 0.1, dtype=torch.float64)}, n, 1.0, 1)
            for w, n in (("a", 8), ("b", 8), ("c", 160))}
    mean = rounds.dp_mean(g, ones, 3, {"w"})
    assert torch.allclose(mean["w"], torch.full((4,), 0.1, dtype=torch.float64))
    two = rounds.dp_mean(g, {w: ones[w] for w in ("a", "b")}, 3, {"w"})  # c did not answer
    assert torch.allclose(two["w"], torch.full((4,), 0.2 / 3, dtype=torch.float64))
    noisy = PrivateRounds(dp=dp("central", 1.0, 0.5)).dp_mean(
        {"w": torch.zeros(200_000, dtype=torch.float64)},
        {w: FitResult(w, {"w": torch.zeros(200_000, dtype=torch.float64)}, n, 1.0, 1)
         for w, n in (("a", 8), ("b", 8), ("c", 160))}, 3, {"w"})
    assert float(noisy["w"].std()) == pytest.approx(0.5 / 3, rel=0.02)


def test_found_by_review_fedadam_composes_within_the_quantization():
    """Found by review: at 24 fractional bits FedAdam's normalised step turned the rounding
    of tiny mean updates into whole steps (1.2e-4 off plain FedAdam after one round)."""
    from fedmq.strategy.fedopt import FedAdam
    sizes = [5, 48, 200]
    plain, _ = run(None, make_workers(sizes=sizes), small_config(rounds=1), FedAdam())
    secure, history = run(make_private_rounds("secagg+", seed=3), make_workers(sizes=sizes),
                          small_config(rounds=1), FedAdam())
    assert history[0].status == "ok"
    assert max_diff(plain.weights, secure.weights) < 1e-6


def test_found_by_review_resume_agrees_with_spelled_out_dp_defaults():
    """Found by review: a DP run started without --noise-multiplier recorded None, so
    resuming it with `--noise-multiplier 1.0` (its default) was refused as a change."""
    import argparse

    from fedmq.fl import cli
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.add_train_command(sub)
    implicit = parser.parse_args(["train", "--dp", "central"])
    explicit = parser.parse_args(["train", "--dp", "central", "--noise-multiplier", "1.0",
                                  "--max-grad-norm", "1", "--dp-delta", "1e-5"])
    assert cli.run_options(implicit) == cli.run_options(explicit)


def test_a_secure_reply_with_a_bad_example_count_is_dropped_not_fatal():
    """A FitRes whose num_examples (FedAvg's weight, sent in the clear) is not a positive
    int is that worker's failure; the round sums the others."""
    class BadCount:
        def __init__(self, worker) -> None:
            self.worker, self.id = worker, worker.id

        def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
            reply = self.worker.handle_frame(frame, login)
            decoded = serde.decode(reply)
            if isinstance(getattr(decoded, "value", None), FitRes):
                decoded.value.num_examples = -5
                return serde.encode(decoded)
            return reply

        def __getattr__(self, name):
            return getattr(self.worker, name)

    ws = make_workers()
    ws["w0"] = BadCount(ws["w0"])
    coord, history = run(make_private_rounds("secagg+", seed=3), ws, small_config(rounds=1))
    record = history[0]
    assert record.status == "ok", record.failed
    assert "num_examples" in record.failed["w0"] and set(record.workers) == {"w1", "w2"}


def test_a_worker_hanging_in_the_set_up_leaves_the_others_time_to_train():
    """A worker that never answers a SecAgg+ set-up stage drops out when a quarter of the
    round has passed, not at the round's deadline (which would leave no time for Fits); the
    first stage takes half of that, so the second still has time (it failed the round once,
    under load, when the hanging worker used up both stages' time)."""
    import time as clock

    class Hang:
        def __init__(self, worker) -> None:
            self.worker, self.id = worker, worker.id

        def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
            if type(serde.decode(frame).message).__name__ == "SecAggSetup":
                clock.sleep(3.0)
                raise ConnectionError("hung")
            return self.worker.handle_frame(frame, login)

        def __getattr__(self, name):
            return getattr(self.worker, name)

    ws = make_workers(4)
    ws["w3"] = Hang(ws["w3"])
    started = clock.monotonic()
    coord, history = run(make_private_rounds("secagg+", seed=3), ws,
                         small_config(rounds=1, round_timeout=8))
    record = history[0]
    assert record.status == "ok", record.failed
    assert set(record.workers) == {"w0", "w1", "w2"} and "set-up" in record.failed["w3"]
    assert clock.monotonic() - started < 8


class _Slow:
    """A worker whose Fit ends `fit_left` seconds before its round's deadline (the round's
    start is `start[0]`, `timeout` long) and whose stage 3 answers take `unmask` seconds."""

    def __init__(self, worker, start: list, timeout: float, fit_left: float,
                 unmask: float) -> None:
        self.worker, self.id = worker, worker.id
        self.start, self.timeout, self.fit_left, self.unmask = start, timeout, fit_left, unmask

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        import time as clock
        kind = type(serde.decode(frame).message).__name__
        if kind == "SecAggUnmask":
            clock.sleep(self.unmask)
        reply = self.worker.handle_frame(frame, login)
        if kind == "Fit":
            clock.sleep(max(0.0, self.start[0] + self.timeout - self.fit_left - clock.time()))
        return reply

    def __getattr__(self, name):
        return getattr(self.worker, name)


def test_found_by_review_unmasks_sent_early_that_time_out_are_asked_again():
    """Unmasks sent during the Fits (SecAggPlus.masked) carry the Fits' deadline; stage 3
    gets a later one. Fits that end 0.15 s before their deadline with workers that take
    0.3 s to answer stage 3: the early requests time out, and stage 3 asks those workers
    again under its own deadline (it once failed the round, every worker alive)."""
    import time as clock
    timeout, start = 6.0, [0.0]

    class Timed(Coordinator):
        async def run_round(self, round):
            start[0] = clock.time()
            return await super().run_round(round)
    ws = {w: _Slow(x, start, timeout, 0.15, 0.3) for w, x in make_workers(4).items()}
    coord = Timed(InProcessConnection(ws), list(ws), small_config(rounds=1,
                                                                  round_timeout=timeout),
                  echo=lambda line: None, privacy=make_private_rounds("secagg+", seed=3))
    record = asyncio.run(coord.run())[0]
    assert record.status == "ok" and sorted(record.workers) == sorted(ws), record.failed


def test_found_by_review_a_run_cancelled_during_the_fits_stops_its_early_unmasks():
    """A run cancelled while Unmasks sent early are in flight (one worker still training,
    one hanging in stage 3) leaves no request of the round running: the coordinator
    abandons the round (SecureAggregator.abandon)."""
    import threading
    import time as clock
    unmasking = threading.Event()

    class Worker_:
        def __init__(self, worker, fit: float, unmask: float) -> None:
            self.worker, self.id, self.fit, self.unmask = worker, worker.id, fit, unmask

        def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
            kind = type(serde.decode(frame).message).__name__
            if kind == "SecAggUnmask":
                unmasking.set()
                clock.sleep(self.unmask)
            reply = self.worker.handle_frame(frame, login)
            if kind == "Fit":
                clock.sleep(self.fit)
            return reply

        def __getattr__(self, name):
            return getattr(self.worker, name)
    ws = make_workers(20)
    ws = {w: Worker_(x, 3.0 if w == "w0" else 0.0, 2.0) for w, x in ws.items()}
    privacy = make_private_rounds("secagg+", seed=3)
    coord = Coordinator(InProcessConnection(ws), list(ws), small_config(rounds=1,
                                                                        round_timeout=30),
                        echo=lambda line: None, privacy=privacy)

    async def main():
        task = asyncio.ensure_future(coord.run())
        while not unmasking.is_set():
            await asyncio.sleep(0.01)
        requests = [t for t in asyncio.all_tasks() if "secure_request" in repr(t.get_coro())]
        assert requests  # sent during the Fits (w0 still trains)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):
            await asyncio.sleep(0)
        assert all(t.done() for t in requests)
        assert not privacy.aggregator._rounds
    asyncio.run(main())


def test_encode_is_the_documented_formula_and_refuses_non_finite_updates():
    """quantize.encode = weight * round(clamp(update, -clip, clip) * 2**f) (int64), the count
    of clipped elements; flatten casts every entry to float64 in the model's order."""
    torch.manual_seed(3)
    update = torch.randn(1000, dtype=torch.float64) * 3
    update[:7] = torch.tensor([70.0, -65.0, 64.0, -64.0, 1e9, 0.0, -0.0], dtype=torch.float64)
    for weight in (0, 1, 5):
        for clip, f in ((64.0, 32), (2.0, 10), (1e6, 0)):
            got, clipped = quantize.encode(update, weight, clip, f)
            want = torch.round(update.clamp(-clip, clip) * 2.0 ** f).to(torch.int64) * weight
            assert got.dtype == torch.int64 and torch.equal(got, want)
            assert clipped == int((update.abs() > clip).sum())
    assert torch.equal(quantize.encode(update.float(), 2)[0],
                       quantize.encode(update.float().double(), 2)[0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = update.clone()
        broken[500] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            quantize.encode(broken, 1)
    weights = {"a": torch.ones(2, 3, dtype=torch.float32), "b": torch.arange(4),
               "c": torch.full((5,), 0.5, dtype=torch.float16)}
    flat = quantize.flatten(weights, ["c", "a", "b"])
    assert flat.dtype == torch.float64 and flat.tolist() == [0.5] * 5 + [1.0] * 6 + [0, 1, 2, 3]
    assert quantize.flatten(weights, ["a"]).tolist() == [1.0] * 6


@pytest.mark.parametrize("how", ["raises", "cancelled"])
def test_found_by_review_a_run_that_fails_or_is_cancelled_still_ends_its_session(how):
    """The end of the SecAgg+ session (SecAggEnd) is sent however the run stops: a round that
    raises, or the run's task cancelled (Ctrl-C): the workers keep nothing of it."""
    workers = make_workers()
    privacy = make_private_rounds("secagg+", seed=3)
    coordinator = Coordinator(InProcessConnection(workers), list(workers),
                              small_config(rounds=3), echo=lambda line: None, privacy=privacy)
    real = coordinator.run_round

    async def second_round_stops(round):
        if round == 2:
            if how == "raises":
                raise RuntimeError("a round failed")
            asyncio.current_task().cancel()
            await asyncio.sleep(1)
        return await real(round)
    coordinator.run_round = second_round_stops
    with pytest.raises(RuntimeError if how == "raises" else asyncio.CancelledError):
        asyncio.run(coordinator.run())
    session, = privacy.aggregator.ended_sessions
    assert not [key for key in secaggplus._STATES if key[2] == session]
    assert not [key for key in secaggplus._CHANNELS if key[2] == session]

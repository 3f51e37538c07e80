"""The coordinator side of private rounds: secure aggregation (fedmq.secagg) and differential
privacy (fedmq.privacy), as `fedmq train --secure-aggregation ... --dp ...` asks.

A securely aggregated round (Coordinator.run_round):
  1. `begin`: the method's stages before training (SecAgg+: advertise and share keys); a
     worker that drops out there does not train;
  2. every remaining worker gets its Fit with a "secure_aggregation" entry (`fit_ins`) and
     answers with its protected update (fedmq.fl.secure_fit) instead of its weights;
  3. `finish`: the method's stages after training (SecAgg+: unmasking) give the ring sum of
     the contributors' encoded updates, decoded here into their mean update, added to the
     global weights and folded into the strategy as one result (FitAggregate.add_mean). The
     coordinator never holds an individual update: only the strategies that need the mean
     alone compose with it (`Strategy.aggregates_mean`).

Differential privacy (DP-FedAvg, McMahan, Ramage, Talwar, Zhang, ICLR 2018; user-level):
  central       each update is clipped to L2 norm C and Gaussian noise of std z*C/m is added
                to the mean of the m sampled workers' updates (Flower's server-side fixed
                clipping); with secure aggregation the workers clip and each adds its share
                of the noise (distributed DP), calibrated for the fewest contributors the
                method accepts, so the sum carries at least std z*C;
  local         DP-SGD on each worker through Opacus (Abadi et al., CCS 2016): per-sample
                clipping and noise, fedmq.fl.training.
A privacy accountant from Opacus reports epsilon at the run's delta after every round
(`account`): central, the sampling rate is the fraction of workers sampled; local, each
worker's batches and batch fraction, and the largest epsilon over the workers is reported.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from fedmq.secagg import quantize
from fedmq.secagg.base import Request, SecureAggregationError, SecureAggregator
from fedmq.strategy import FitIns, FitResult, Strategy


class PrivateRounds:
    """A run's secure aggregation (`aggregator`, None for none) and differential privacy
    (`dp`, a fedmq.privacy.config.DPConfig, None for none).

    `clip`, `frac_bits`: the ring encoding of updates (fedmq.secagg.quantize). `min_contributors`
    is what distributed noise is calibrated for (default: the method's threshold, else 2)."""

    def __init__(self, aggregator: SecureAggregator | None = None, dp: Any = None, *,
                 clip: float = quantize.CLIP, frac_bits: int = quantize.FRAC_BITS,
                 min_contributors: int | None = None) -> None:
        quantize.check_range(clip, frac_bits)
        self.aggregator, self.dp = aggregator, dp
        self.clip, self.frac_bits = float(clip), int(frac_bits)
        self.min_contributors = min_contributors
        self.accountant: Any = None
        if dp is not None:
            from fedmq.privacy.accountant import CentralAccountant, LocalAccountants
            kind = CentralAccountant if dp.mode == "central" else LocalAccountants
            self.accountant = kind(dp.noise_multiplier, dp.delta, kind=dp.accountant)

    def __repr__(self) -> str:
        return self.describe()

    def describe(self, workers: int | None = None) -> str:
        """One line: the method (with SecAgg+'s neighbours k and threshold t for a round of
        `workers`, additive's aggregators), the DP mechanism and its numbers."""
        parts = []
        if self.aggregator is not None:
            detail = ""
            degree = getattr(self.aggregator, "degree", None)
            if workers and degree is not None:
                detail = (f" (k={degree(workers)} neighbours, threshold "
                          f"t={self.aggregator.fewest_contributors(workers)}, of {workers} "
                          f"workers)")
            elif getattr(self.aggregator, "aggregators", None):
                detail = f" (aggregators {', '.join(self.aggregator.aggregators)})"
            parts.append(f"secure aggregation {self.aggregator.name}{detail}")
        if self.dp is not None:
            parts.append(f"{self.dp.mode} DP (z={self.dp.noise_multiplier}, "
                         f"C={self.dp.max_grad_norm}, delta={self.dp.delta})")
        return "; ".join(parts) or "none"

    @property
    def secure(self) -> bool:
        return self.aggregator is not None

    @property
    def central(self) -> bool:
        """Central DP that does something: a finite clipping norm or noise (with neither,
        DP-FedAvg is plain FedAvg, and the run takes FedAvg's sample-weighted mean, bitwise)."""
        return self.dp is not None and self.dp.mode == "central" and (
            bool(self.dp.noise_multiplier) or math.isfinite(self.dp.max_grad_norm))

    def check_strategy(self, strategy: Strategy) -> None:
        """ValueError when `strategy` needs each update (FedMedian, Krum, ...) and the run
        aggregates securely, or when DP meets an asynchronous strategy."""
        if self.secure and not getattr(strategy, "aggregates_mean", False):
            raise ValueError(f"{type(strategy).__name__} needs every worker's update, which "
                             f"secure aggregation hides from the coordinator: use FedAvg, "
                             f"FedProx, FedAdam, FedYogi, FedAdagrad or FedAvgM")

    # -- before training -----------------------------------------------------------------------
    async def begin(self, round: int, workers: list[str], request: Request, deadline: float,
                    global_weights: dict) -> dict[str, dict]:
        """worker -> its method entry, for the workers that may train (secure rounds only).
        Raises SecureAggregationError."""
        if hasattr(self.aggregator, "length"):  # SecAgg+ fixes the vectors' length in stage 0
            self.aggregator.length = sum(t.numel() for t in global_weights.values())
        return await self.aggregator.begin_round(round, workers, request, deadline)

    def fit_ins(self, ins: FitIns, entry: dict | None, sampled: int) -> FitIns:
        """`ins` with what the worker needs for this round's privacy: the secure-aggregation
        settings (with its method `entry`), and the local-DP settings."""
        config = dict(ins.config)
        dp = self.dp
        if dp is not None and dp.mode == "local":
            config["dp"] = dp.as_dict()
        if entry is not None:
            dp_clip = dp_std = 0.0
            if self.central:
                from fedmq.privacy import central
                dp_clip = float(dp.max_grad_norm) if math.isfinite(dp.max_grad_norm) else 0.0
                if dp.noise_multiplier:
                    dp_std = central.distributed_std(dp.noise_multiplier, dp.max_grad_norm,
                                                     self.noise_floor(sampled))
            config["secure_aggregation"] = {
                "method": self.aggregator.name, "entry": entry, "clip": self.clip,
                "frac_bits": self.frac_bits, "weighted": not self.central,
                "dp_clip": dp_clip, "dp_noise_std": dp_std}
        return FitIns(ins.parameters, config)

    def noise_floor(self, sampled: int) -> int:
        """The fewest contributors a secure round accepts: distributed noise is calibrated
        so that even they carry the central noise."""
        floor = self.min_contributors or self.aggregator.fewest_contributors(sampled)
        return max(1, min(int(floor), sampled))

    def masked(self, round: int, worker: str, res: Any, request: Request,
               deadline: float) -> None:
        """A worker's protected FitRes `res` arrived: the method may start its last stages
        (SecureAggregator.masked)."""
        if self.aggregator is not None:
            self.aggregator.masked(round, worker, res.weights, request, deadline)

    def abandon(self, round: int) -> None:
        """The secure round `round` will not be finished (SecureAggregator.abandon)."""
        if self.aggregator is not None:
            self.aggregator.abandon(round)

    async def end_session(self, request: Request, deadline: float) -> None:
        """The run is over: the workers may free what the method keeps for it
        (SecureAggregator.end_session; best effort by `deadline`)."""
        if self.aggregator is not None:
            await self.aggregator.end_session(request, deadline)

    # -- after training ------------------------------------------------------------------------
    async def finish(self, round: int, global_weights: dict, protected: dict[str, Any],
                     request: Request, deadline: float,
                     sampled: int | None = None) -> tuple[dict, list[str]]:
        """(the contributors' mean weights, the contributors), from their protected FitRes
        (`protected`: worker -> FitRes). The sample-weighted mean; with central DP the sum of
        the (clipped, noised) updates over `sampled`, the workers sampled, whoever answered
        (DP-FedAvg's fixed denominator, see `dp_mean`). Raises SecureAggregationError."""
        carried = {w: res.weights for w, res in protected.items()}
        total, contributors = await self.aggregator.end_round(round, carried, request,
                                                              deadline)
        if not contributors:
            raise SecureAggregationError(f"round {round}: no contributor left")
        weight = (sum(int(protected[w].num_examples) for w in contributors)
                  if not self.central else max(int(sampled or len(contributors)), 1))
        if weight > quantize.MAX_WEIGHT_SUM:  # the ring sum may have wrapped: not a mean
            raise SecureAggregationError(
                f"round {round}: {weight} examples in the sum, more than the "
                f"{quantize.MAX_WEIGHT_SUM} the encoding holds (fedmq.secagg.quantize)")
        names = list(global_weights)
        if not isinstance(total, torch.Tensor) or total.dtype != torch.int64 or \
                total.numel() != sum(t.numel() for t in global_weights.values()):
            raise SecureAggregationError(f"round {round}: the sum does not match the model")
        mean_update = quantize.decode(total, weight, self.frac_bits)
        base = quantize.flatten(global_weights, names)
        return quantize.unflatten(base + mean_update, global_weights, names), contributors

    def clip_result(self, global_weights: dict, result: FitResult,
                    trainable: set[str] | None) -> FitResult:
        """Central DP without secure aggregation: the result with its update (trainable
        float entries) clipped to L2 norm C on the coordinator."""
        if not math.isfinite(self.dp.max_grad_norm):
            return result
        from fedmq.privacy import central
        names = _noised(global_weights, trainable)
        update = quantize.flatten(result.weights, names) - quantize.flatten(global_weights, names)
        clipped, _ = central.clip_update(update, float(self.dp.max_grad_norm))
        new = quantize.unflatten(quantize.flatten(global_weights, names) + clipped,
                                 global_weights, names)
        return FitResult(result.worker_id, {**result.weights, **new}, result.num_examples,
                         result.loss, result.round, result.metrics)

    def check_model(self, weights: dict, trainable: set[str] | None) -> None:
        """ValueError when differential privacy cannot cover the model: float entries outside
        its trainable parameters (BatchNorm's running statistics) change with the data but
        are neither clipped nor noised, as Opacus refuses them too."""
        if self.dp is None or trainable is None:
            return
        outside = [n for n, t in weights.items() if t.is_floating_point() and n not in trainable]
        if outside:
            raise ValueError(
                f"--dp covers a model's trainable parameters only, and this one has float "
                f"buffers or frozen parameters ({', '.join(outside[:3])}"
                f"{', ...' if len(outside) > 3 else ''}): BatchNorm's running statistics are "
                f"computed from the data outside the clipped, noised update; use GroupNorm or "
                f"LayerNorm")

    def dp_mean(self, global_weights: dict, results: dict[str, FitResult], sampled: int,
                trainable: set[str] | None) -> dict:
        """Central DP without secure aggregation: DP-FedAvg's fixed-denominator estimator
        (McMahan et al. 2018) of the round's results (each already clipped, `clip_result`):
        global + (sum of the clipped updates) / m + N(0, (z*C/m)^2) on the trainable float
        entries, m the workers sampled, whoever answered. Dividing by m, not by who
        contributed, keeps one worker's influence at C/m with it or without it, which is what
        the accountant's z assumes. Integer entries: the sample-weighted mean, rounded."""
        from fedmq.privacy import central
        m = max(int(sampled), 1)
        noised = set(_noised(global_weights, trainable))
        total = sum(int(r.num_examples) for r in results.values()) or 1
        std = (central.central_std(self.dp.noise_multiplier, self.dp.max_grad_norm, m)
               if self.dp.noise_multiplier else 0.0)
        out = {}
        for name, g in global_weights.items():
            base = g.detach().to(torch.float64)
            if name in noised:
                value = base + sum(r.weights[name].to(torch.float64) - base
                                   for r in results.values()) / m
                if std:
                    value = value + central.noise(g.numel(), std).reshape(g.shape)
            else:
                value = sum(r.weights[name].to(torch.float64) * int(r.num_examples)
                            for r in results.values()) / total
                if not g.is_floating_point():
                    value = value.round()
            out[name] = value.to(g.dtype)
        return out

    def account(self, sampled: int, population: int, metrics: dict[str, dict]) -> float | None:
        """Epsilon spent so far at the run's delta, after this round (None without DP).
        `metrics`: worker -> its FitRes metrics (local DP reads its batches and batch
        fraction there)."""
        if self.dp is None:
            return None
        if self.dp.mode == "central":
            if sampled:
                self.accountant.step(sampled / max(population, sampled))
            return self.accountant.epsilon()
        for worker, m in metrics.items():
            rate, steps = m.get("dp_sample_rate"), m.get("dp_steps")
            if isinstance(rate, (int, float)) and isinstance(steps, int) and steps > 0:
                self.accountant.step(worker, float(rate), steps)
        return self.accountant.max_epsilon()

    def state_dict(self) -> dict:
        return {"accountant": self.accountant.state_dict()} if self.accountant else {}

    def load_state_dict(self, state: dict) -> None:
        if self.accountant is not None and state.get("accountant") is not None:
            self.accountant.load_state_dict(state["accountant"])


def make_private_rounds(method: str | None, aggregators: list[str] | None = None, *,
                        threshold: int | None = None, neighbours: int | None = None,
                        seed: int | None = None, dp: Any = None) -> PrivateRounds | None:
    """The PrivateRounds of `method` ("secagg+", "additive" with its `aggregators`, or None)
    and `dp` (a DPConfig or None); None when neither is asked for. ValueError for an unknown
    method."""
    if method is None and dp is None:
        return None
    aggregator: SecureAggregator | None = None
    if method == "secagg+":
        from fedmq.secagg.secaggplus import SecAggPlus
        # the neighbour graph's permutation: from the run's seed (reproducible), or random
        graph_seed = None if seed is None else hashlib.sha256(f"secagg+ {seed}".encode()).digest()
        aggregator = SecAggPlus(threshold=threshold, neighbours=neighbours, seed=graph_seed)
    elif method == "additive":
        from fedmq.secagg.additive import AdditiveAggregation
        aggregator = AdditiveAggregation(list(aggregators or []))
    elif method is not None:
        raise ValueError(f"unknown secure aggregation method {method!r}")
    return PrivateRounds(aggregator, dp)


def _noised(weights: dict, trainable: set[str] | None) -> list[str]:
    """The entries DP clips and noises: the trainable float parameters."""
    return [n for n, t in weights.items() if t.is_floating_point() and
            (trainable is None or n in trainable)]

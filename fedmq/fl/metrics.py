"""What a run leaves in its folder: `metrics.jsonl` (one JSON object per round: round, time,
loss, accuracy, per-worker loss and samples, failed workers; an asynchronous run's per
version) and `metrics.png`, drawn with matplotlib's Agg backend from `plot_series`: test
accuracy; training loss, each worker's and the test loss; red x markers on the step axis where
Fits failed, with their number; and, when the records carry an `epsilon` (differential
privacy), a panel of its value per step and one of test accuracy against epsilon (the
privacy/utility trade-off). The figure is titled with the run's name. An infinite epsilon
(noise multiplier 0) is written to metrics.jsonl as null, as NaN is (strict JSON), and so is
not plotted."""
from __future__ import annotations

import json
import math
import pathlib
import warnings
from typing import Any

METRICS = "metrics.jsonl"
PLOT = "metrics.png"
#: the workers' loss lines (blue is the test loss, red the failed Fits)
WORKER_COLORS = ("tab:green", "tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:olive",
                 "tab:cyan", "tab:purple")


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf as None, tuples as lists and dict keys as strings (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricsLog:
    def __init__(self, run_dir: str | pathlib.Path) -> None:
        self.path = pathlib.Path(run_dir) / METRICS

    @classmethod
    def in_run_dir(cls, run_dir: pathlib.Path | None) -> "MetricsLog | None":
        """The metrics log of a run folder (created if missing); None for runs without one."""
        if run_dir is None:
            return None
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_dir)

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def truncate(self, last_round: int) -> None:
        """Keep the rounds up to `last_round` (resuming from its checkpoint)."""
        self.rewrite([r for r in self.read() if r["round"] <= last_round])

    def rewrite(self, records: list[dict]) -> None:
        """Replace the file's lines by `records`."""
        self.path.write_text("".join(json.dumps(json_safe(r)) + "\n" for r in records))


def failures_at(record: dict, previous: dict | None) -> int:
    """Failed Fits in one record: a round's `failed` workers (not "*", the round's own
    failure), or the growth of an asynchronous record's running `failures` count."""
    failed = record.get("failed")
    if isinstance(failed, dict):
        return len([w for w in failed if w != "*"])
    if "failures" in record:
        before = (previous or {}).get("failures") or 0
        return max(0, (record.get("failures") or 0) - before)
    return 0


def worker_losses(record: dict) -> dict[str, float]:
    """worker -> its training loss in one record (a round's `workers`; an asynchronous
    version's `updates`, the mean of a worker's updates in it)."""
    workers = record.get("workers")
    if isinstance(workers, dict):
        return {w: v["loss"] for w, v in workers.items()
                if isinstance(v, dict) and v.get("loss") is not None}
    sums: dict[str, list[float]] = {}
    for update in record.get("updates") or []:
        if isinstance(update, dict) and "worker" in update and update.get("loss") is not None:
            sums.setdefault(update["worker"], []).append(update["loss"])
    return {w: sum(v) / len(v) for w, v in sums.items()}


def plot_series(records: list[dict], x: str = "round") -> dict:
    """What `plot` draws, as data (x values are `record[x]`):
        loss: (xs, training losses)              accuracy: (xs, percent) of evaluated steps
        test_loss: (xs, losses) of evaluated steps   workers: {worker: (xs, losses)}
        failed: [(x, failed Fits)] for steps with a failed Fit or status "failed"
        epsilon: (xs, values) of records with an `epsilon`, or None when none has one
        accuracy_epsilon: (epsilons, percent) of evaluated records with an `epsilon`, or None
            when none has both (the accuracy/epsilon trade-off)"""
    xs = [r[x] for r in records]
    evaluated = [r for r in records if r.get("accuracy") is not None]
    workers: dict[str, tuple[list, list]] = {}
    failed = []
    previous = None
    for r in records:
        for w, loss in worker_losses(r).items():
            workers.setdefault(w, ([], []))
            workers[w][0].append(r[x])
            workers[w][1].append(loss)
        n = failures_at(r, previous)
        if n or r.get("status") == "failed":
            failed.append((r[x], n))
        previous = r
    with_eps = [r for r in records if r.get("epsilon") is not None]
    traded = [r for r in with_eps if r.get("accuracy") is not None]
    return {
        "loss": (xs, [r.get("loss") for r in records]),
        "accuracy": ([r[x] for r in evaluated], [100 * r["accuracy"] for r in evaluated]),
        "test_loss": ([r[x] for r in evaluated], [r.get("test_loss") for r in evaluated]),
        "workers": workers,
        "failed": failed,
        "epsilon": ([r[x] for r in with_eps], [r["epsilon"] for r in with_eps])
        if with_eps else None,
        "accuracy_epsilon": ([r["epsilon"] for r in traded],
                             [100 * r["accuracy"] for r in traded]) if traded else None,
    }


def _mark_failures(ax, failed: list[tuple]) -> None:
    """Red x markers on the step axis (bottom of `ax`) with the number of failed Fits."""
    if not failed:
        return
    from matplotlib.transforms import blended_transform_factory
    on_axis = blended_transform_factory(ax.transData, ax.transAxes)
    ax.scatter([f[0] for f in failed], [0.0] * len(failed), marker="x", color="red", s=40,
               transform=on_axis, clip_on=False, zorder=5, label="failed Fits")
    for step, n in failed:
        ax.annotate(str(n), (step, 0.0), xycoords=on_axis, xytext=(0, 6),
                    textcoords="offset points", ha="center", color="red", fontsize=8)


def figure(records: list[dict], x: str = "round", title: str | None = None) -> Any:
    """The matplotlib Figure `plot` saves (see there); its axes, left to right: "Test
    accuracy", "Loss", and with an epsilon "Privacy budget spent (epsilon)" and "Accuracy
    against epsilon". Close it with matplotlib.pyplot.close. Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = plot_series(records, x)
    panels = 2 + (series["epsilon"] is not None) + (series["accuracy_epsilon"] is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.3))
    ax_acc, ax_loss = axes[0], axes[1]
    ax_acc.plot(*series["accuracy"], "o-", label="federated model (test)")
    ax_acc.set(xlabel=x, ylabel="accuracy (%)", title="Test accuracy")
    ax_loss.plot(*series["loss"], ".-", color="black", lw=2, label="training loss")
    for i, (worker, (wx, wy)) in enumerate(sorted(series["workers"].items())):
        ax_loss.plot(wx, wy, ".-", lw=0.8, alpha=0.7, color=WORKER_COLORS[i % len(WORKER_COLORS)],
                     label=f"{worker} (training)")  # a marker: one point is seen too
    ax_loss.plot(*series["test_loss"], "o-", color="tab:blue", label="test loss")
    ax_loss.set(xlabel=x, ylabel="loss", title="Loss")
    from matplotlib.ticker import MaxNLocator
    steps = [r[x] for r in records if isinstance(r.get(x), (int, float))]
    for ax in axes[:3 if series["epsilon"] else 2]:  # the panels whose x axis is the step
        if steps:  # every step on the axis, failed ones too (they have no point of their own)
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    for ax in (ax_acc, ax_loss):
        _mark_failures(ax, series["failed"])
        ax.grid(True, alpha=0.3)
    if series["failed"]:
        ax_acc.legend(fontsize=8)
    ax_loss.legend(fontsize=7, ncol=1 + len(series["workers"]) // 6)
    if series["epsilon"]:
        ax_eps = axes[2]
        ax_eps.plot(*series["epsilon"], ".-", color="purple")
        ax_eps.set(xlabel=x, ylabel="epsilon", title="Privacy budget spent (epsilon)")
        ax_eps.grid(True, alpha=0.3)
    if series["accuracy_epsilon"]:
        ax_trade = axes[-1]
        eps, acc = series["accuracy_epsilon"]
        ax_trade.plot(eps, acc, "o-", color="purple")
        for e, a, r in zip(eps, acc, [r for r in records if r.get("epsilon") is not None
                                      and r.get("accuracy") is not None]):
            ax_trade.annotate(str(r.get(x, "")), (e, a), xytext=(3, 3), fontsize=7,
                              textcoords="offset points")  # which step each point is
        ax_trade.set(xlabel="epsilon (privacy spent)", ylabel="test accuracy (%)",
                     title="Accuracy against epsilon")
        ax_trade.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    with warnings.catch_warnings():  # a crowded legend: the layout is kept as it is
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def plot(records: list[dict], path: str | pathlib.Path, x: str = "round",
         title: str | None = None) -> pathlib.Path:
    """`plot_series(records, x)` drawn into the PNG `path`, titled `title` (the run's name):
    accuracy, losses and failed Fits per step, and with an epsilon (differential privacy) a
    panel of epsilon per step and one of accuracy against epsilon (`figure`). The title is
    also the PNG's "Title" text. Needs matplotlib (ImportError otherwise)."""
    import matplotlib.pyplot as plt

    fig = figure(records, x, title)
    try:
        fig.savefig(path, dpi=80, metadata={"Title": title} if title else None)
    finally:
        plt.close(fig)
    return pathlib.Path(path)

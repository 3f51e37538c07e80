"""What a run leaves in its folder: `metrics.jsonl` (one JSON object per round: round, time,
loss, accuracy, per-worker loss and samples, failed workers) and `metrics.png` (accuracy and
loss per round, drawn with matplotlib's Agg backend)."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any

METRICS = "metrics.jsonl"
PLOT = "metrics.png"


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


def plot(records: list[dict], path: str | pathlib.Path, x: str = "round") -> pathlib.Path:
    """Accuracy and loss against `x` ("round"; the async coordinator plots "version")."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r[x] for r in records]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    evaluated = [r for r in records if r.get("accuracy") is not None]
    ax_acc.plot([r[x] for r in evaluated], [100 * r["accuracy"] for r in evaluated],
                "o-", label="federated model (test)")
    ax_acc.set(xlabel=x, ylabel="accuracy (%)", title="Test accuracy")
    ax_acc.grid(True, alpha=0.3)
    ax_loss.plot(rounds, [r.get("loss") for r in records], ".-", label="training loss")
    ax_loss.plot([r[x] for r in evaluated], [r.get("test_loss") for r in evaluated], "o-",
                 label="test loss")
    ax_loss.set(xlabel=x, ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_loss.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return pathlib.Path(path)

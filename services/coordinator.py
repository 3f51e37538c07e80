"""The coordinator service: `python services/coordinator.py [options]` is `fedmq train [options]`
(seed §14's federated rounds; see fedmq/fl/cli.py)."""
import sys

from fedmq.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

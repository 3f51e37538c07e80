"""Seed §14's program (the notes' A-f-l-o-M-new.py) on fedmq, as written: only the imports and
`WebsocketClientWorker(...)` -> `AMQPClientWorker(...)` changed. The helper module it imports
is examples/run_websocket_client.py.

Start the workers first (one terminal each, or `&`), then run this:

    fedmq worker --id alice   --dataset mnist5k --labels 0-3 --key mnist
    fedmq worker --id bob     --dataset mnist5k --labels 4-6 --key mnist
    fedmq worker --id charlie --dataset mnist5k --labels 7-9 --key mnist   # optional
    fedmq worker --id testing --dataset mnist5k --testing   --key mnist_testing
    python examples/seed_s14_program.py                   # alice and bob: about 68%
    FEDMQ_S14_WORKERS=alice,bob,charlie python examples/seed_s14_program.py   # >= 92%

FEDMQ_URL names the broker (default amqp://guest:guest@127.0.0.1:5672/). With broker users per
service, the workers grant this program's user `--grant coordinator:USER`.
"""
import inspect
# Dependencies
import os
import sys
import asyncio

import fedmq as sy
from fedmq.workers.amqp import AMQPClientWorker
from fedmq.fl import utils

import torch
from torchvision import datasets, transforms  # noqa: F401 - imported by the notes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_websocket_client as rwc  # noqa: E402

URL = os.environ.get("FEDMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
WORKERS = os.environ.get("FEDMQ_S14_WORKERS", "alice,bob").split(",")


async def main():
    hook = sy.TorchHook(torch)

    args = rwc.define_and_get_arguments(args=[])
    use_cuda = args.cuda and torch.cuda.is_available()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if use_cuda else "cpu")
    print(args)

    import logging

    logger = logging.getLogger("run_websocket_client")

    if not len(logger.handlers):
        FORMAT = "%(asctime)s - %(message)s"
        DATE_FMT = "%H:%M:%S"
        formatter = logging.Formatter(FORMAT, DATE_FMT)
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        logger.propagate = False
    LOG_LEVEL = logging.DEBUG
    logger.setLevel(LOG_LEVEL)

    # the broker replaces the notes' hosts and ports
    kwargs_websocket = {"url": URL, "hook": hook, "verbose": args.verbose}
    alice = AMQPClientWorker(id="alice", **kwargs_websocket)
    bob = AMQPClientWorker(id="bob", **kwargs_websocket)
    charlie = AMQPClientWorker(id="charlie", **kwargs_websocket) if "charlie" in WORKERS else None
    testing = AMQPClientWorker(id="testing", **kwargs_websocket)
    worker_instances = [alice, bob]
    if charlie is not None:
        worker_instances = [alice, bob, charlie]

    print(inspect.getsource(rwc.Net))

    model = rwc.Net().to(device)
    print(model)

    traced_model = torch.jit.trace(model, torch.zeros([1, 1, 28, 28], dtype=torch.float))

    print("Federate_after_n_batches: " + str(args.federate_after_n_batches))
    print("Batch size: " + str(args.batch_size))
    print("Initial learning rate: " + str(args.lr))

    learning_rate = args.lr
    device = "cpu"  # torch.device("cpu")
    traced_model = torch.jit.trace(model, torch.zeros([1, 1, 28, 28], dtype=torch.float))
    for curr_round in range(1, args.training_rounds + 1):
        logger.info("Training round %s/%s", curr_round, args.training_rounds)

        results = await asyncio.gather(
            *[
                rwc.fit_model_on_worker(
                    worker=worker,
                    traced_model=traced_model,
                    batch_size=args.batch_size,
                    curr_round=curr_round,
                    max_nr_batches=args.federate_after_n_batches,
                    lr=learning_rate,
                )
                for worker in worker_instances
            ]
        )
        models = {}
        loss_values = {}

        test_models = curr_round % 10 == 1 or curr_round == args.training_rounds
        if test_models:
            logger.info("Evaluating models")
            np.set_printoptions(formatter={"float": "{: .0f}".format})
            for worker_id, worker_model, _ in results:
                rwc.evaluate_model_on_worker(
                    model_identifier="Model update " + worker_id,
                    worker=testing,
                    dataset_key="mnist_testing",
                    model=worker_model,
                    nr_bins=10,
                    batch_size=128,
                    print_target_hist=False,
                    device=device
                )

        # Federate models (note that this will also change the model in models[0]
        for worker_id, worker_model, worker_loss in results:
            if worker_model is not None:
                models[worker_id] = worker_model
                loss_values[worker_id] = worker_loss

        traced_model = utils.federated_avg(models)

        if test_models:
            rwc.evaluate_model_on_worker(
                model_identifier="Federated model",
                worker=testing,
                dataset_key="mnist_testing",
                model=traced_model,
                nr_bins=10,
                batch_size=128,
                print_target_hist=False,
                device=device
            )

        # decay learning rate
        learning_rate = max(0.98 * learning_rate, args.lr * 0.01)

    if args.save_model:
        torch.save(model.state_dict(), "mnist_cnn.pt")

if __name__ == "__main__":
    asyncio.get_event_loop().run_until_complete(main())

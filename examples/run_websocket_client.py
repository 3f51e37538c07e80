"""The helper module seed §14's program imports as `rwc` (PySyft 0.2.4's
`examples/tutorials/advanced/websockets-example-MNIST/run_websocket_client.py`, which the notes
use but never show), written for fedmq: the same names, arguments and printed lines.

    import run_websocket_client as rwc
    args = rwc.define_and_get_arguments(args=[])
    worker_id, model, loss = await rwc.fit_model_on_worker(worker, traced_model, 32, 1, 10, 0.1)
    rwc.evaluate_model_on_worker("Federated model", testing, "mnist_testing", model, 10, 128)

Workers are `fedmq worker` services (or VirtualWorkers) serving MNIST under the dataset keys
PySyft's servers used: "mnist" for the train partitions, "mnist_testing" for the test set.
"""
import argparse
import logging
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import fedmq as sy

logger = logging.getLogger("run_websocket_client")


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def loss_fn(pred, target):
    return F.nll_loss(input=pred, target=target)


try:  # PySyft's helper scripts the loss; torch.jit.script needs the source file, which we have
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loss_fn = torch.jit.script(loss_fn)
except Exception:  # noqa: BLE001 - a plain function serves the same (it is traced into a plan)
    pass


def define_and_get_arguments(args=sys.argv[1:]):
    parser = argparse.ArgumentParser(
        description="Run federated learning using fedmq worker services (seed §14).")
    # in alphabetical order, so that the Namespace prints as the notes show it
    parser.add_argument("--batch_size", type=int, default=32, help="batch size of the training")
    parser.add_argument("--cuda", action="store_true", help="use cuda (fedmq: CPU only)")
    parser.add_argument("--federate_after_n_batches", type=int, default=10,
                        help="number of training steps performed on each remote worker "
                             "before averaging")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--save_model", action="store_true", help="if set, model will be saved")
    parser.add_argument("--seed", type=int, default=1, help="seed used for randomization")
    parser.add_argument("--test_batch_size", type=int, default=128,
                        help="batch size used for the test data")
    parser.add_argument("--training_rounds", type=int, default=40,
                        help="number of federated learning rounds")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="if set, websocket client workers will be started in verbose mode")
    return parser.parse_args(args=args)


async def fit_model_on_worker(worker, traced_model, batch_size, curr_round, max_nr_batches,
                              lr):
    """Send the model to the worker and fit it on its "mnist" data; returns
    (worker id, trained model, loss)."""
    train_config = sy.TrainConfig(
        model=traced_model,
        loss_fn=loss_fn,
        batch_size=batch_size,
        shuffle=True,
        max_nr_batches=max_nr_batches,
        epochs=1,
        optimizer="SGD",
        optimizer_args={"lr": lr},
    )
    train_config.send(worker)
    loss = await worker.async_fit(dataset_key="mnist", return_ids=[0])
    model = train_config.model_ptr.get()
    return worker.id, model, loss


def evaluate_model_on_worker(model_identifier, worker, dataset_key, model, nr_bins, batch_size,
                             device="cpu", print_target_hist=False):
    model.eval()

    # Create and send train config
    train_config = sy.TrainConfig(batch_size=batch_size, model=model, loss_fn=loss_fn,
                                  optimizer_args=None, epochs=1)
    train_config.send(worker)

    result = worker.evaluate(
        dataset_key=dataset_key,
        return_histograms=True,
        nr_bins=nr_bins,
        return_loss=True,
        return_raw_accuracy=True,
        device=device,
    )
    test_loss = result["loss"]
    correct = result["nr_correct_predictions"]
    len_dataset = result["nr_predictions"]
    hist_pred = result["histogram_predictions"]
    hist_target = result["histogram_target"]

    if print_target_hist:
        logger.info("Target histogram: %s", hist_target)
    percentage_0_3 = int(100 * sum(hist_pred[0:4]) / len_dataset)
    percentage_4_6 = int(100 * sum(hist_pred[4:7]) / len_dataset)
    percentage_7_9 = int(100 * sum(hist_pred[7:10]) / len_dataset)
    logger.info("%s: Percentage numbers 0-3: %s%%, 4-6: %s%%, 7-9: %s%%", model_identifier,
                percentage_0_3, percentage_4_6, percentage_7_9)
    logger.info("%s: Average loss: %s, Accuracy: %s/%s (%s%%)", model_identifier,
                f"{test_loss:.4f}", correct, len_dataset,
                f"{100.0 * correct / len_dataset:.2f}")
    return result

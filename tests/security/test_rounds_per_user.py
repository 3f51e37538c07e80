"""Federated rounds over RabbitMQ with a broker user per service and no guest anywhere: each
worker logs in as itself and owns its data, the coordinator is a user of its own that the
workers grant `coordinator`; the run gives exactly the in-process results. A stranger's Fit is
refused by every worker."""
from __future__ import annotations

import argparse
import asyncio

import pytest

import fedmq
from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
from fedmq.fl.coordinator import Coordinator, TrainConfig, initial_weights
from fedmq.fl.messages import Fit

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

TRAIN = {"pu-alice": "0-3", "pu-bob": "4-6"}
TESTING = "pu-testing"


def test_rounds_with_a_user_per_service_match_the_in_process_run(make_broker_user, tmp_path):
    from worker_procs import WorkerProcesses
    coordinator, coordinator_url = make_broker_user("coordinator")
    mallory, mallory_url = make_broker_user("stranger")
    procs = {}
    try:
        for worker_id in [*TRAIN, TESTING]:
            name, url = make_broker_user(worker_id)
            assert "guest" not in url
            procs[worker_id] = WorkerProcesses(tmp_path / worker_id, url=url)
            (tmp_path / worker_id).mkdir()
            data = ["--labels", TRAIN[worker_id]] if worker_id in TRAIN else ["--testing"]
            procs[worker_id].start(worker_id, "--dataset", "mnist5k", *data,
                                   "--grant", f"coordinator:{coordinator}", wait=False)
        for worker_id, p in procs.items():
            p.wait_consuming(worker_id, p.procs[worker_id], timeout=120)
            assert f"owner '{p.url.split('//')[1].split(':')[0]}'" in p.log(worker_id)
        cfg = TrainConfig(rounds=2, batch_size=32, num_batches=4, lr=0.1, eval_every=1,
                          round_timeout=30, seed=5)

        async def run():
            conn = await AMQPRoundConnection.connect(coordinator_url)
            coord = Coordinator(conn, list(TRAIN), cfg, testing=TESTING, echo=lambda line: None)
            try:
                return await coord.run()
            finally:
                await conn.aclose()
        history = asyncio.run(run())

        from fedmq.service import build_worker
        local = {w: build_worker(argparse.Namespace(id=w, dataset="mnist5k", labels=labels,
                                                    testing=False)) for w, labels in TRAIN.items()}
        local[TESTING] = build_worker(argparse.Namespace(id=TESTING, dataset="mnist5k",
                                                         labels=None, testing=True))
        expected = asyncio.run(Coordinator(InProcessConnection(local), list(TRAIN), cfg,
                                           testing=TESTING, echo=lambda line: None).run())
        assert all(r.status == "ok" and sorted(r.workers) == sorted(TRAIN) for r in history)
        assert [r.correct for r in history] == [r.correct for r in expected]
        assert history[-1].correct > 0

        hook = fedmq.TorchHook()
        try:
            for worker_id in procs:
                stranger = fedmq.AMQPClientWorker(hook, id=worker_id, url=mallory_url,
                                                  timeout=30)
                with pytest.raises(fedmq.AccessDeniedError, match="may not send Fit"):
                    stranger.call(Fit(1, "mnist-logreg", initial_weights("mnist-logreg", 1),
                                      {"batch_size": 8, "num_batches": 1}))
                assert stranger.search([]) == []
        finally:
            hook.context.close()
    finally:
        for worker_id, p in procs.items():
            p.stop_all(delete_queues=True)

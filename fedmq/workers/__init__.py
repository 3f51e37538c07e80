from fedmq.workers.virtual import VirtualWorker

__all__ = ["VirtualWorker"]

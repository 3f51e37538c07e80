"""Secure aggregation of federated updates: the coordinator learns only the sum.

Two methods, both summing int64 vectors in the ring Z_2^64 (the workers' quantized, weighted
updates, fedmq.secagg.quantize):

    secaggplus   SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020): pairwise masks
                 from X25519 key agreement, Shamir shares of the mask seeds for dropout
                 recovery, every worker-to-worker message AEAD-encrypted and relayed by the
                 coordinator
    additive     the seed's §10 way with fedmq's SMPC: each worker splits its vector into
                 additive shares, one per aggregator worker, sent worker to worker; the
                 aggregators sum the shares and the coordinator reconstructs only the sum

    base         SecureAggregator: what the coordinator drives (begin_round before training,
                 end_round after it), and the worker-side `protect`
    quantize     clipping and fixed-point encoding of an update into the ring, and back
    hooks        the "secagg" extension: the workers' handlers and the wire records
"""

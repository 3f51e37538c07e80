"""Differential privacy for federated rounds (issue 16, Deliver 3).

    config.py       DPConfig: mode ("central" | "local"), noise multiplier z, clipping norm C,
                    delta, accountant ("rdp" | "prv"); validated, as plain values and back
    accountant.py   CentralAccountant (DP-FedAvg, user level) and LocalAccountants (DP-SGD,
                    one per worker): Opacus' RDP / PRV accountants, epsilon at the run's delta
    central.py      DP-FedAvg (McMahan et al., 2018): clip an update's L2 norm, Gaussian
                    noise, its std on the mean (central) or split among workers (distributed)
    local.py        DP-SGD on the worker (Abadi et al., 2016) through Opacus: per-sample
                    clipping and Gaussian noise (fedmq.fl.training.fit uses it)

The package never imports fedmq.fl or fedmq.strategy (import-linter contract): the coordinator
and the worker use it, not the other way round. Opacus is imported when first needed (it
costs about 1.5 s), so `import fedmq.privacy` stays light.
"""
from fedmq.privacy.config import ACCOUNTANTS, MODES, DPConfig

__all__ = ["ACCOUNTANTS", "MODES", "DPConfig"]

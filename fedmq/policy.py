"""A worker's access policy: who may do what with the objects it holds, and how much.

Every object in a worker's store belongs to the principal that created it (see
fedmq.store: each principal has a space of its own; to anyone else its objects do not exist).
What the worker loads itself, its dataset, belongs to the *data owner* (`Policy.owner`, by
default the worker's own login) and is private data. The owner decides who may touch it, by
role:

    coordinator   may send `Fit` / `Evaluate`, and receives their replies (the update, the
                  metrics): the federated-learning path
    scientist     may find the private data with search / ListObjects and compute on it with
                  pointers, plans and SMPC; what comes out is marked private too
    worker        a peer worker service, trusted to say on whose behalf it forwards objects
                  (moves, plan outputs, SMPC deals) and to keep the private mark; private
                  values are only ever forwarded to such peers

and by `release`, what may leave the worker in the clear (`.get()`, a reply carrying a value,
a reconstructed secret share):

    none      no private value, raw or derived, ever leaves (only Fit/Evaluate replies to the
              coordinator); the default of `fedmq worker`
    derived   values computed from the private data may be fetched by a scientist, the raw data
              itself never (PySyft 0.2's trusted-lab behaviour, for tutorials)
    all       anything a principal may see it may fetch (in-process default: the seed's open
              behaviour)

The data owner always may do everything with its own data. No principal but the owner may
modify it in place or replace it.

`Policy.open()` is what in-process `VirtualWorker`s use unless given another one: every role
granted to everyone, release all, no quotas: the seed's listings run as written, through the
same policy code.

Quotas (`max_bytes`, `max_objects`, per principal and worker; None = no limit) bound what one
principal may store; the data owner's own space is not counted against them. Resource limits
bound what one message may cost (fedmq.limits): `max_frame_bytes` (its size on the wire),
`max_op_bytes` (the results of one op, for every principal; a non-owner's ops are also
bounded by what its quota leaves) and `max_op_seconds` (how long one message may run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from fedmq.principals import LOCAL

ROLES = ("coordinator", "scientist", "worker")
RELEASES = ("none", "derived", "all")
#: a grant to everyone
ANYONE = "*"
#: `--allow-model any`: every model plan (see Policy.models)
ANY_MODEL = "any"


@dataclass(frozen=True)
class Policy:
    """owner: the data owner's principal (its space holds the worker's own data).
    grants: role -> the principals granted it (`ANYONE` grants it to every principal).
    release: "none", "derived" or "all" (see the module's docstring).
    max_bytes, max_objects: per-principal quota of stored tensor bytes / objects (None: none).
    max_frame_bytes: frames larger than this many bytes are refused before decoding
        (FrameTooLargeError; None: no limit).
    max_op_bytes: the most bytes the tensor results of one op may take, whoever runs it
        (QuotaExceededError, before the op runs; None: only the principal's quota bounds it).
    max_op_seconds: the most seconds one message (a Batch, a plan run, a Fit) may run; it is
        stopped between two ops or training batches past it (TimeLimitError; None: no limit).
    models: the model plans (digests, `sha256:...`, or `ANY_MODEL`) a principal other than the
        owner may train or evaluate here (fedmq/fl/training.py). A model plan is code of the
        coordinator's choosing: one written for it can carry the data out in its update, its
        loss or its metrics. None: every plan when `release` is "derived" or "all", and none
        but the built-in models under "none" (the owner reviews a model and allows it by
        digest).
    require_secure_aggregation: a principal other than the owner gets this worker's update
        only securely aggregated (fedmq.secagg: a `Fit` without it is refused): a
        coordinator cannot simply ask for it in the clear (one that deviates from the
        protocol, inventing SecAgg+ neighbours whose keys it holds, still can; README).
    """
    owner: str = LOCAL
    grants: Mapping[str, frozenset] = field(default_factory=dict)
    release: str = "all"
    max_bytes: int | None = None
    max_objects: int | None = None
    max_frame_bytes: int | None = None
    max_op_bytes: int | None = None
    max_op_seconds: float | None = None
    models: frozenset | None = None
    require_secure_aggregation: bool = False

    def __post_init__(self) -> None:
        if self.release not in RELEASES:
            raise ValueError(f"release must be one of {RELEASES}, got {self.release!r}")
        unknown = set(self.grants) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)}; the roles are {ROLES}")
        for name, value in (("max_bytes", self.max_bytes), ("max_objects", self.max_objects),
                            ("max_frame_bytes", self.max_frame_bytes),
                            ("max_op_bytes", self.max_op_bytes)):
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        seconds = self.max_op_seconds
        if seconds is not None and (type(seconds) not in (int, float) or not seconds > 0):
            raise ValueError(f"max_op_seconds must be a positive number or None, got "
                             f"{seconds!r}")
        object.__setattr__(self, "grants", {role: frozenset(who)
                                            for role, who in self.grants.items()})
        if self.models is not None:
            models = frozenset(self.models)
            bad = [m for m in models if m != ANY_MODEL and not (
                isinstance(m, str) and m.startswith("sha256:") and len(m) == 71
                and all(c in "0123456789abcdef" for c in m[7:]))]
            if bad:
                raise ValueError(f"--allow-model {bad[0]!r}: expected sha256:<64 lowercase hex "
                                 f"digits> "
                                 f"(the digest a refused Fit names) or {ANY_MODEL!r}")
            object.__setattr__(self, "models", models)

    @classmethod
    def open(cls, owner: str = LOCAL) -> "Policy":
        """The seed's behaviour: every role granted to everyone, anything visible may be
        fetched, no quotas (each client's own objects are still its own)."""
        return cls(owner=owner, grants={role: {ANYONE} for role in ROLES}, release="all")

    @classmethod
    def from_options(cls, owner: str, grants: Iterable[str] = (), release: str = "none",
                     models: Iterable[str] | None = None,
                     require_secure_aggregation: bool = False,
                     **limits: int | None) -> "Policy":
        """A policy from `fedmq worker` options: `grants` are "ROLE:PRINCIPAL" strings.
        Raises ValueError naming the bad item."""
        table: dict[str, set] = {}
        for item in grants:
            role, sep, principal = str(item).partition(":")
            if not sep or not principal or role not in ROLES:
                raise ValueError(f"--grant {item!r}: expected ROLE:PRINCIPAL with ROLE one of "
                                 f"{', '.join(ROLES)}")
            table.setdefault(role, set()).add(principal)
        return cls(owner=owner, grants=table, release=release,
                   models=frozenset(models) if models else None,
                   require_secure_aggregation=bool(require_secure_aggregation), **limits)

    @property
    def is_open(self) -> bool:
        return self.release == "all" and all(ANYONE in self.grants.get(role, ())
                                              for role in ROLES)

    def allows(self, role: str, principal: str) -> bool:
        """Whether `principal` holds `role` (the data owner holds every role)."""
        if principal == self.owner:
            return True
        who = self.grants.get(role)
        return bool(who) and (principal in who or ANYONE in who)

    def allows_model(self, principal: str, digest: str) -> bool:
        """Whether `principal` may have model plan `digest` run on the data (see `models`)."""
        if principal == self.owner:
            return True
        if self.models is None:
            return self.release != "none"
        return ANY_MODEL in self.models or digest in self.models

    def shares_statistics(self, principal: str) -> bool:
        """Whether `principal` may see aggregate statistics of the owner's data (samples and
        per-label counts per dataset, fedmq.dataset_info): the owner; a coordinator, whose Fit
        and Evaluate replies carry them already (sample counts, the targets' per-label
        histogram), under every release; a scientist where derived values are released."""
        return self.allows("coordinator", principal) or (
            self.allows("scientist", principal) and self.releases(raw=False))

    def releases(self, raw: bool) -> bool:
        """Whether a private value (`raw`: the data itself, else derived from it) may leave
        the worker in the clear for a principal other than the owner."""
        return self.release == "all" or (self.release == "derived" and not raw)

    def principal_for(self, login: str, on_behalf: str | None) -> str:
        """The principal a message acts for: its sender's `login`, or the principal a trusted
        peer worker (role `worker`) says it forwards for. Raises PermissionError when a
        principal that is not a trusted peer claims to act for another, and when anyone but
        the owner claims to act for the data owner (a peer is trusted with what its clients
        may do, not with the owner's rights)."""
        if not on_behalf or on_behalf == login:
            return login
        if on_behalf == self.owner:
            raise PermissionError(f"principal {login!r} may not act on behalf of the data owner "
                                  f"{on_behalf!r}: only the owner's own login may")
        if self.allows("worker", login):
            return on_behalf
        raise PermissionError(f"principal {login!r} may not act on behalf of {on_behalf!r} (the "
                              f"worker grants that to its peer workers: --grant worker:{login})")

    def describe(self) -> str:
        """One line for logs: owner, grants, release, quotas and limits."""
        if self.is_open:
            return f"open policy (owner {self.owner!r})"
        grants = ", ".join(f"{role}: {', '.join(sorted(who))}"
                           for role, who in sorted(self.grants.items())) or "no grants"
        quota = "" if self.max_bytes is None and self.max_objects is None else \
            f"; quota {self.max_bytes} bytes / {self.max_objects} objects per principal"
        limits = [f"{flag} {value:g}" if type(value) is float else f"{flag} {value}"
                  for flag, value in (("max-frame-bytes", self.max_frame_bytes),
                                      ("max-op-bytes", self.max_op_bytes),
                                      ("max-op-seconds", self.max_op_seconds))
                  if value is not None]
        limits_text = f"; limits: {', '.join(limits)}" if limits else ""
        models = "" if self.models is None else \
            f"; model plans allowed: {', '.join(sorted(m[:19] for m in self.models))}"
        return (f"owner {self.owner!r}; {grants}; release {self.release}{quota}{limits_text}"
                f"{models}")

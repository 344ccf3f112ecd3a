"""The knobs every sandbox front shares: per-call latency, token-bucket rate limits, one time scale, faults, counters,
and how long a control-plane write takes to reach its data plane (propagation, flapping, the agent's credential cache).

Each front (the EKS front with IAM and STS behind it, ARM, the Entra token endpoint, the GCP APIs, each Kubernetes
API) describes every request as a `Call` and asks its `Knobs` for a `Verdict`; the front then answers a refusal in
its own cloud's words. Time is sandbox time: a `TimeScale` runs it `factor` times faster than the wall clock, so
every delay (latency, bucket refill, propagation) shrinks by the same factor and a benchmark keeps real ratios.
"""

from __future__ import annotations

import collections
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from keyless.durations import parse_duration

__all__ = [
    "LIMIT_NAMES",
    "PROPAGATION_NAMES",
    "REALISTIC_AGENT_CACHE",
    "REALISTIC_LIMITS",
    "REALISTIC_PROPAGATION",
    "Call",
    "Denied",
    "Failed",
    "FaultState",
    "KnobSettings",
    "Knobs",
    "LostMode",
    "Propagation",
    "RateLimit",
    "Settling",
    "Throttled",
    "TimeScale",
    "Verdict",
    "parse_duration",
    "parse_settings",
]

Clock = Callable[[], float]
LostMode = Literal["error", "drop"]
_HISTORY_KEPT = 100_000  # calls kept in order for tests that read them; counters are never trimmed


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_second` sustained (sandbox seconds), `burst` at once."""

    per_second: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError("a rate limit needs perSecond > 0 and burst >= 1")

    def to_json(self) -> dict[str, float | int]:
        return {"perSecond": self.per_second, "burst": self.burst}


# Limit names, each an operation class of one front. A front takes a token from every named bucket its call lists.
LIMIT_NAMES: Mapping[str, str] = MappingProxyType({
    "eks-read": "EKS reads (Describe*, List*), per region",
    "eks-write": "EKS writes (Create*, Update*, Delete*, tags), per region",
    "iam-read": "IAM reads (Get*, List*), per account",
    "iam-write": "IAM writes, per account",
    "sts": "STS calls, per account",
    "arm-read": "ARM reads, per subscription",
    "arm-write": "ARM writes and deletes, per subscription",
    "msi-write-subscription": "Microsoft.ManagedIdentity writes (identities, federated credentials), per subscription",
    "msi-write-identity": "Microsoft.ManagedIdentity writes, per identity",
    "entra-token": "Entra ID token requests, per tenant",
    "gcp-iam-read": "IAM API reads (serviceAccounts.get, getIamPolicy, keys.list), per project",
    "gcp-iam-write": "IAM API writes (setIamPolicy), per project",
    "kube": "Kubernetes API requests, per cluster (API Priority and Fairness answers 429)",
})

# The `realistic` preset. Where REFERENCE.md gives a figure it is used (managed-identity writes: 0.25/s per identity,
# 2/s per subscription). The rest are published elsewhere or assumed, and said so: ARM's subscription token buckets
# (reads 25/s, bucket 250; writes 10/s, bucket 200), Google IAM's default quotas (6,000 reads and 600 writes per
# minute), and AWS, which publishes no EKS or IAM rates (assumed: EKS 20 reads/s and 10 writes/s, the rates keyless
# paces itself to in providers/aws_api.py with half these bursts; IAM 20 and 5).
# Kubernetes: a few tens of requests per second before APF queues a client's flow (assumed 20/s, burst 40).
REALISTIC_LIMITS: Mapping[str, RateLimit] = MappingProxyType({
    "eks-read": RateLimit(20.0, 20),
    "eks-write": RateLimit(10.0, 10),
    "iam-read": RateLimit(20.0, 40),
    "iam-write": RateLimit(5.0, 10),
    "arm-read": RateLimit(25.0, 250),
    "arm-write": RateLimit(10.0, 200),
    "msi-write-subscription": RateLimit(2.0, 20),
    "msi-write-identity": RateLimit(0.25, 4),
    "gcp-iam-read": RateLimit(100.0, 100),
    "gcp-iam-write": RateLimit(10.0, 10),
    "kube": RateLimit(20.0, 40),
})


@dataclass(frozen=True)
class Settling:
    """How one write reaches a data plane, in sandbox seconds after the write: it takes effect after `delay`, then is
    missing again during each of `outages` (replicas that have not caught up answer as if it were not there)."""

    delay: float
    outages: tuple[tuple[float, float], ...] = ()

    def in_effect(self, elapsed: float) -> bool:
        return elapsed >= self.delay and not any(start <= elapsed < end for start, end in self.outages)

    @property
    def settled(self) -> float:
        """Seconds after the write from which it is in effect for good."""
        return max([self.delay, *(end for _, end in self.outages)])


FLAP_SLOTS = 8  # a flap window is cut into this many slots, each served by replicas that have the write or not


@dataclass(frozen=True)
class Propagation:
    """How long writes of one kind take to reach their data plane: a delay drawn per write, uniformly between
    `min_delay` and `max_delay` (sandbox seconds); then, for `flap_window` seconds after it first takes effect, each
    of the window's slots (an eighth of it) is missing again with probability `flap_rate` (the first never is)."""

    min_delay: float
    max_delay: float
    flap_window: float = 0.0
    flap_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay <= self.max_delay or self.flap_window < 0:
            raise ValueError("propagation needs 0 <= minDelay <= maxDelay and flapWindow >= 0")
        if not 0.0 <= self.flap_rate <= 1.0:
            raise ValueError("propagation flapRate must be between 0 and 1")

    def settling(self, seed: int, key: str) -> Settling:
        """The schedule of the write `key` (what was written, and how many times before): the same for the same seed
        and key, whatever else the sandbox was asked in between or in which order writes arrived."""
        draw = random.Random(f"{seed}/{key}")
        delay = self.min_delay + (self.max_delay - self.min_delay) * draw.random()
        if not self.flap_window or not self.flap_rate:
            return Settling(delay)
        slot = self.flap_window / FLAP_SLOTS
        outages: list[tuple[float, float]] = []
        for index in range(1, FLAP_SLOTS):
            if draw.random() < self.flap_rate:
                start = delay + index * slot
                if outages and outages[-1][1] == start:
                    outages[-1] = (outages[-1][0], start + slot)  # adjacent slots make one outage
                else:
                    outages.append((start, start + slot))
        return Settling(delay, tuple(outages))

    def to_json(self) -> dict[str, float]:
        return {"minDelay": self.min_delay, "maxDelay": self.max_delay, "flapWindow": self.flap_window,
                "flapRate": self.flap_rate}


# What a propagation knob can name: one kind of write and the data plane it has to reach.
PROPAGATION_NAMES: Mapping[str, str] = MappingProxyType({
    "entra-credential": "a federated identity credential written, changed or deleted, until Entra ID's token endpoint "
                        "uses it (AADSTS70021 meanwhile, and again while it flaps)",
    "eks-association": "a pod identity association created or changed, until the Pod Identity agent hands out its "
                       "role (new pods get no credentials or the old role meanwhile)",
})

# The `realistic` preset (sandbox seconds). Entra: "seconds to minutes" for a new credential to work (REFERENCE.md),
# and exchanges that failed can fail again for a while after a first success while Entra's replicas converge. EKS:
# "associations take several seconds to take effect" (REFERENCE.md); AWS publishes no figure, so assumed 2-10 s (the
# settle keyless waits, providers/aws.py PROPAGATION_SETTLE, covers it).
REALISTIC_PROPAGATION: Mapping[str, Propagation] = MappingProxyType({
    "entra-credential": Propagation(5.0, 90.0, flap_window=40.0, flap_rate=0.3),
    "eks-association": Propagation(2.0, 10.0),
})
# The Pod Identity agent keeps a pod's credentials up to --max-credential-retention-before-renewal, 3 h by default
# (aws/eks-pod-identity-agent cmd/server.go), refreshing them only then (internal/credsretriever/refreshing_cache.go).
REALISTIC_AGENT_CACHE = 3 * 3600.0


@dataclass(frozen=True)
class KnobSettings:
    """What shapes every call of a front: latency and jitter (sandbox seconds), rate limits, random faults."""

    latency: float = 0.0
    jitter: float = 0.0  # up to this much more per call, drawn from an RNG seeded with fault_seed
    rate_limits: Mapping[str, RateLimit] = field(default_factory=lambda: MappingProxyType({}))
    fault_rate: float = 0.0  # the share of calls that fail at random: throttled, 5xx, or (writes) a lost response
    fault_seed: int = 0  # also seeds every propagation delay and flap
    # Writes with no propagation knob take the fixed delay their stand-in was built with, and never flap.
    propagation: Mapping[str, Propagation] = field(default_factory=lambda: MappingProxyType({}))
    agent_cache: float = 0.0  # sandbox seconds the Pod Identity agent keeps a pod's credentials (0: none)

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("faultRate must be between 0 and 1")
        unknown = sorted(set(self.rate_limits) - set(LIMIT_NAMES))
        if unknown:
            raise ValueError(f"unknown rate limits {', '.join(unknown)}; known: {', '.join(LIMIT_NAMES)}")
        unknown = sorted(set(self.propagation) - set(PROPAGATION_NAMES))
        if unknown:
            raise ValueError(f"unknown propagation {', '.join(unknown)}; known: {', '.join(PROPAGATION_NAMES)}")
        if self.agent_cache < 0:
            raise ValueError("agentCache must be >= 0")
        object.__setattr__(self, "rate_limits", MappingProxyType(dict(self.rate_limits)))
        object.__setattr__(self, "propagation", MappingProxyType(dict(self.propagation)))

    def settling(self, name: str, key: str) -> Settling | None:
        """The seeded schedule of one write of kind `name` (PROPAGATION_NAMES); None when no knob sets that kind."""
        found = self.propagation.get(name)
        return None if found is None else found.settling(self.fault_seed, f"{name}/{key}")

    def to_json(self) -> dict[str, Any]:
        return {"latency": self.latency, "jitter": self.jitter, "faultRate": self.fault_rate,
                "faultSeed": self.fault_seed,
                "rateLimits": {name: limit.to_json() for name, limit in sorted(self.rate_limits.items())},
                "propagation": {name: found.to_json() for name, found in sorted(self.propagation.items())},
                "agentCache": self.agent_cache}


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    return float(value)


def _limits(value: Any, current: Mapping[str, RateLimit]) -> dict[str, RateLimit]:
    if value in ("off", None):
        return {}
    if value == "realistic":
        return dict(REALISTIC_LIMITS)
    if not isinstance(value, Mapping):
        raise ValueError("rateLimits must be 'off', 'realistic' or {name: {perSecond, burst} or null}")
    limits = dict(current)
    for name, limit in value.items():
        if limit is None:
            limits.pop(str(name), None)
        elif isinstance(limit, Mapping) and isinstance(limit.get("perSecond"), int | float):
            limits[str(name)] = RateLimit(float(limit["perSecond"]), int(limit.get("burst", 1)))
        else:
            raise ValueError(f"rateLimits.{name} must be {{perSecond, burst}} or null")
    return limits


def _propagation(value: Any, current: Mapping[str, Propagation]) -> dict[str, Propagation]:
    if value in ("off", None):
        return {}
    if value == "realistic":
        return dict(REALISTIC_PROPAGATION)
    if not isinstance(value, Mapping):
        raise ValueError("propagation must be 'off', 'realistic' or {name: {minDelay, maxDelay, flapWindow, flapRate} "
                         "or null}")
    found = dict(current)
    for name, given in value.items():
        if given is None:
            found.pop(str(name), None)
            continue
        if not isinstance(given, Mapping) or set(given) - {"minDelay", "maxDelay", "flapWindow", "flapRate"}:
            raise ValueError(f"propagation.{name} must be {{minDelay, maxDelay, flapWindow, flapRate}} or null")
        low, high = _number(given, "minDelay"), _number(given, "maxDelay")
        if low is None and high is None:
            raise ValueError(f"propagation.{name} needs minDelay or maxDelay")
        found[str(name)] = Propagation(
            low if low is not None else high or 0.0, high if high is not None else low or 0.0,
            _number(given, "flapWindow") or 0.0, _number(given, "flapRate") or 0.0)
    return found


def parse_settings(body: Mapping[str, Any], current: KnobSettings = KnobSettings()) -> KnobSettings:
    """The settings `body` (JSON, as the HTTP routes and the CLI send it) makes of `current`; ValueError if bad."""
    known = {"latency", "jitter", "rateLimits", "faultRate", "faultSeed", "timeScale", "propagation", "agentCache"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError(f"unknown knobs {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    latency, jitter, rate = _number(body, "latency"), _number(body, "jitter"), _number(body, "faultRate")
    cache = _number(body, "agentCache")
    seed = body.get("faultSeed", current.fault_seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError("faultSeed must be an integer")
    return KnobSettings(
        latency=current.latency if latency is None else latency,
        jitter=current.jitter if jitter is None else jitter,
        rate_limits=_limits(body["rateLimits"], current.rate_limits) if "rateLimits" in body
        else current.rate_limits,
        fault_rate=current.fault_rate if rate is None else rate,
        fault_seed=seed,
        propagation=_propagation(body["propagation"], current.propagation) if "propagation" in body
        else current.propagation,
        agent_cache=current.agent_cache if cache is None else cache,
    )


class TimeScale:
    """Sandbox time: `factor` times faster than `clock`; changing the factor never makes it jump (thread-safe)."""

    def __init__(self, factor: float = 1.0, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._factor = 1.0
        self._anchor_wall = self._anchor_sandbox = clock()
        self.factor = factor

    @property
    def factor(self) -> float:
        return self._factor

    @factor.setter
    def factor(self, factor: float) -> None:
        if not factor > 0:
            raise ValueError("timeScale must be > 0")
        with self._lock:
            wall = self._clock()
            self._anchor_sandbox += (wall - self._anchor_wall) * self._factor
            self._anchor_wall, self._factor = wall, float(factor)

    def now(self) -> float:
        """Sandbox seconds: what every stand-in measures its delays on."""
        with self._lock:
            return self._anchor_sandbox + (self._clock() - self._anchor_wall) * self._factor

    def wall(self, seconds: float) -> float:
        """Wall seconds that `seconds` of sandbox time take."""
        return seconds / self._factor

    def retry_after(self, seconds: float) -> str:
        """A Retry-After value (wall time) for a wait of `seconds` sandbox seconds.

        At scale 1 whole seconds, never 0, as every cloud sends it. At another scale the exact wall time in decimal
        seconds (which azure-core, botocore and keyless's retry helper all read), so a scaled benchmark keeps its
        ratios instead of rounding every wait up to a second."""
        wall = self.wall(seconds)
        if self._factor == 1.0:
            return str(max(1, math.ceil(wall - 1e-9)))
        return f"{max(0.001, wall):.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Call:
    """One request as the knobs see it: its operation as the cloud names it, the permission it needs, its buckets."""

    method: str
    path: str
    operation: str
    action: str = ""  # what deny() matches (`eks:ListPodIdentityAssociations`, an ARM action); "" never denied here
    write: bool = False
    buckets: tuple[tuple[str, str], ...] = ()  # (limit name, scope): a token is taken from each that is limited

    def matches(self, filters: tuple[str, ...]) -> bool:
        """No filter selects every call; else one whose operation, action or path contains one of them."""
        if not filters:
            return True
        haystacks = (self.operation.lower(), self.action.lower(), self.path.lower())
        return any(f.lower() in h for f in filters for h in haystacks)


@dataclass(frozen=True)
class Throttled:
    """Refused for rate: `limit` is the bucket that ran dry (None: an armed or random throttle)."""

    limit: str | None
    scope: str
    retry_after: str  # the header value, wall time


@dataclass(frozen=True)
class Failed:
    """A server-side failure (or an armed 4xx) with this status."""

    status: int
    retry_after: str | None = None


@dataclass(frozen=True)
class Denied:
    action: str


Refusal = Throttled | Failed | Denied


@dataclass(frozen=True)
class Verdict:
    """What to do with one call: wait `delay` wall seconds, then refuse it, or serve it (and maybe lose the answer)."""

    delay: float = 0.0
    refusal: Refusal | None = None
    lose: LostMode | None = None
    remaining: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ArmedFault:
    """A fault waiting for the next `remaining` calls its filters select."""

    kind: Literal["throttle", "fail", "lose"]
    remaining: int
    match: tuple[str, ...] = ()
    status: int = 500
    mode: LostMode = "error"
    retry_after: float | None = None  # sandbox seconds

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, "remaining": self.remaining, "match": list(self.match)}
        if self.kind == "fail":
            body["status"] = self.status
        if self.kind == "lose":
            body["mode"] = self.mode
        if self.retry_after is not None:
            body["retryAfter"] = self.retry_after
        return body


@dataclass(frozen=True)
class FaultState:
    """A snapshot of the faults armed on one front."""

    armed: tuple[ArmedFault, ...]
    denied: tuple[str, ...]

    @property
    def throttle_remaining(self) -> int:
        return sum(a.remaining for a in self.armed if a.kind == "throttle")

    @property
    def lose_remaining(self) -> int:
        return sum(a.remaining for a in self.armed if a.kind == "lose")

    def to_json(self) -> dict[str, Any]:
        return {"throttleRemaining": self.throttle_remaining, "loseRemaining": self.lose_remaining,
                "armed": [a.to_json() for a in self.armed], "denied": list(self.denied)}


class _Bucket:
    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit, self.tokens, self.stamp = limit, float(limit.burst), now

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.limit.burst), self.tokens + max(0.0, now - self.stamp) * self.limit.per_second)
        self.stamp = now

    def wait(self) -> float:
        """Sandbox seconds until a token is there (0 when one is)."""
        # A hair of slack: refills computed from float clocks land a rounding error short of a whole token.
        return 0.0 if self.tokens >= 1.0 - 1e-9 else (1.0 - self.tokens) / self.limit.per_second


class Knobs:
    """One front's knobs at run time (thread-safe): settings, buckets, armed faults, denied actions, counters."""

    def __init__(self, name: str, time_scale: TimeScale | None = None, settings: KnobSettings | None = None, *,
                 check_action: Callable[[str], bool] | None = None, action_form: str = "") -> None:
        self.name = name
        self.time = time_scale or TimeScale()
        self._check_action = check_action
        self._action_form = action_form
        self._lock = threading.Lock()
        self._settings = settings or KnobSettings()
        self._rng = random.Random(self._settings.fault_seed)
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._armed: list[ArmedFault] = []
        self._denied: dict[str, str] = {}  # lowered (matching ignores case) -> as given
        self._operations: collections.Counter[str] = collections.Counter()
        self._methods: collections.Counter[str] = collections.Counter()
        self._history: list[Call] = []

    # ---- settings ---------------------------------------------------------------------------------

    @property
    def settings(self) -> KnobSettings:
        with self._lock:
            return self._settings

    def configure(self, settings: KnobSettings) -> None:
        """Replace the settings; the buckets start full and the RNG restarts from the seed."""
        with self._lock:
            self._settings = settings
            self._rng = random.Random(settings.fault_seed)
            self._buckets.clear()

    # ---- faults -----------------------------------------------------------------------------------

    def _arm(self, fault: ArmedFault) -> None:
        if fault.remaining < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            # Arming again replaces what was armed with the same kind and filters.
            self._armed = [a for a in self._armed if (a.kind, a.match) != (fault.kind, fault.match)]
            if fault.remaining:
                self._armed.append(fault)

    def throttle_next(self, count: int = 1, *, retry_after: float = 1.0, match: Iterable[str] = ()) -> None:
        """The next `count` calls (that `match` selects) are throttled, asking to retry after `retry_after`."""
        self._arm(ArmedFault("throttle", count, tuple(match), retry_after=retry_after))

    def fail_next(self, count: int = 1, *, status: int = 500, match: Iterable[str] = (),
                  retry_after: float | None = None) -> None:
        """The next `count` calls (that `match` selects) answer `status` (a 5xx, or a 4xx such as 404 or 429)."""
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (4xx or 5xx)")
        self._arm(ArmedFault("fail", count, tuple(match), status=status, retry_after=retry_after))

    def lose_next(self, count: int = 1, *, mode: LostMode = "error", match: Iterable[str] = ()) -> None:
        """The next `count` successful calls (that `match` selects) do their work, but their answer is lost: the
        client gets a 500 ("error") or a dropped connection ("drop")."""
        if mode not in ("error", "drop"):
            raise ValueError("mode must be 'error' or 'drop'")
        self._arm(ArmedFault("lose", count, tuple(match), mode=mode))

    def deny(self, actions: Iterable[str]) -> None:
        """Refuse these actions from now on, as the cloud does for a caller without them; replaces the list."""
        found = frozenset(actions)
        if self._check_action is not None:
            bad = sorted(a for a in found if not self._check_action(a))
            if bad:
                raise ValueError(f"not {self._action_form or 'actions of this front'}: {', '.join(bad)}")
        with self._lock:
            self._denied = {a.lower(): a for a in found}

    def allow(self, actions: Iterable[str]) -> None:
        """Give denied actions back; with none, all of them."""
        found = {a.lower() for a in actions}
        with self._lock:
            self._denied = {k: v for k, v in self._denied.items() if k not in found} if found else {}

    def denies(self, action: str) -> bool:
        with self._lock:
            return action.lower() in self._denied

    def reset_faults(self) -> None:
        """Disarm every fault and allow every action (settings, buckets and counters stay)."""
        with self._lock:
            self._armed.clear()
            self._denied = {}
            self._buckets.clear()

    def faults(self) -> FaultState:
        with self._lock:
            return FaultState(tuple(self._armed), tuple(sorted(self._denied.values())))

    # ---- counters ---------------------------------------------------------------------------------

    def calls(self) -> dict[str, int]:
        """Calls per operation, as the cloud names it."""
        with self._lock:
            return dict(self._operations)

    def calls_by_method(self) -> dict[str, int]:
        with self._lock:
            return dict(self._methods)

    def history(self) -> list[Call]:
        """Every call so far, in order (the last 100,000)."""
        with self._lock:
            return list(self._history)

    def reset_calls(self) -> None:
        with self._lock:
            self._operations.clear()
            self._methods.clear()
            self._history.clear()

    # ---- the decision -----------------------------------------------------------------------------

    def _take_armed(self, call: Call, kind: str) -> ArmedFault | None:
        for index, fault in enumerate(self._armed):
            if fault.kind == kind and call.matches(fault.match):
                left = fault.remaining - 1
                if left:
                    self._armed[index] = ArmedFault(fault.kind, left, fault.match, fault.status, fault.mode,
                                                    fault.retry_after)
                else:
                    del self._armed[index]
                return fault
        return None

    def admit(self, call: Call) -> Verdict:
        """Count the call and decide its fate; never waits (the front sleeps `delay`), so tests need no clock."""
        with self._lock:
            settings = self._settings
            self._operations[call.operation] += 1
            self._methods[call.method] += 1
            self._history.append(call)
            if len(self._history) > 2 * _HISTORY_KEPT:
                del self._history[:-_HISTORY_KEPT]
            delay = self.time.wall(settings.latency + (settings.jitter * self._rng.random() if settings.jitter else 0))
            if call.action and call.action.lower() in self._denied:
                return Verdict(delay, Denied(call.action))
            throttle = self._take_armed(call, "throttle")
            if throttle is not None:
                return Verdict(delay, Throttled(None, "", self.time.retry_after(throttle.retry_after or 1.0)))
            failure = self._take_armed(call, "fail")
            if failure is not None:
                after = None if failure.retry_after is None else self.time.retry_after(failure.retry_after)
                return Verdict(delay, Failed(failure.status, after))
            refusal, remaining = self._take_tokens(call, settings)
            if refusal is not None:
                return Verdict(delay, refusal)
            if settings.fault_rate and self._rng.random() < settings.fault_rate:
                return self._random_fault(call, delay, remaining)
            return Verdict(delay, None, None, MappingProxyType(remaining))

    def _take_tokens(self, call: Call, settings: KnobSettings) -> tuple[Throttled | None, dict[str, int]]:
        limited = [(name, scope, settings.rate_limits[name]) for name, scope in call.buckets
                   if name in settings.rate_limits]
        if not limited:
            return None, {}
        now = self.time.now()
        buckets = []
        for name, scope, limit in limited:
            bucket = self._buckets.get((name, scope))
            if bucket is None or bucket.limit != limit:
                bucket = self._buckets[(name, scope)] = _Bucket(limit, now)
            bucket.refill(now)
            wait = bucket.wait()
            if wait > 0:  # refused calls take no token, here or from the other buckets
                return Throttled(name, scope, self.time.retry_after(wait)), {}
            buckets.append((name, bucket))
        remaining = {}
        for name, bucket in buckets:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            remaining[name] = int(bucket.tokens)
        return None, remaining

    def _random_fault(self, call: Call, delay: float, remaining: dict[str, int]) -> Verdict:
        kinds = ("throttle", "error", "lost") if call.write else ("throttle", "error")
        kind = kinds[self._rng.randrange(len(kinds))]
        if kind == "throttle":
            return Verdict(delay, Throttled(None, "", self.time.retry_after(1.0)))
        if kind == "error":
            return Verdict(delay, Failed(self._rng.choice((500, 503))))
        return Verdict(delay, None, self._rng.choice(("error", "drop")), MappingProxyType(remaining))

    def take_lost(self, call: Call) -> LostMode | None:
        """After a call succeeded: whether an armed lose_next takes its answer."""
        with self._lock:
            fault = self._take_armed(call, "lose")
            return None if fault is None else fault.mode

    def to_json(self) -> dict[str, Any]:
        """Settings, time scale and armed faults, as GET /_sandbox/knobs answers them."""
        return {"front": self.name, **self.settings.to_json(), "timeScale": self.time.factor,
                "faults": self.faults().to_json()}

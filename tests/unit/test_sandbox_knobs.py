"""The sandbox's shared knobs as plain values on an injected clock: buckets, time scale, latency, faults, counters."""

from __future__ import annotations

import pytest

from keyless.sandbox.knobs import (
    REALISTIC_LIMITS,
    REALISTIC_PROPAGATION,
    Call,
    Denied,
    Failed,
    Knobs,
    KnobSettings,
    Propagation,
    RateLimit,
    Settling,
    Throttled,
    TimeScale,
    parse_duration,
    parse_settings,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _read(scope: str = "us-east-1") -> Call:
    return Call("GET", "/clusters/c/pod-identity-associations", "ListPodIdentityAssociations",
                "eks:ListPodIdentityAssociations", False, (("eks-read", scope),))


def _write() -> Call:
    return Call("POST", "/clusters/c/pod-identity-associations", "CreatePodIdentityAssociation",
                "eks:CreatePodIdentityAssociation", True, (("eks-write", "us-east-1"),))


def _knobs(clock: FakeClock, factor: float = 1.0, **settings: object) -> Knobs:
    return Knobs("test", TimeScale(factor, clock), KnobSettings(**settings))  # type: ignore[arg-type]


def test_a_bucket_admits_its_burst_then_throttles_until_it_refills() -> None:
    clock = FakeClock()
    knobs = _knobs(clock, rate_limits={"eks-read": RateLimit(10.0, burst=2)})
    assert knobs.admit(_read()).refusal is None
    assert knobs.admit(_read()).refusal is None
    refused = knobs.admit(_read()).refusal
    assert refused == Throttled("eks-read", "us-east-1", "1")  # 0.1 s to wait: whole seconds, never 0, at scale 1
    clock.now += 0.1
    assert knobs.admit(_read()).refusal is None
    assert knobs.admit(_read("eu-west-1")).refusal is None  # each scope has its own bucket


def test_at_scale_10_a_10_per_second_limit_refills_at_100_per_wall_second() -> None:
    clock = FakeClock()
    knobs = _knobs(clock, factor=10.0, rate_limits={"eks-read": RateLimit(10.0, burst=1)})
    assert knobs.admit(_read()).refusal is None
    refused = knobs.admit(_read()).refusal
    assert isinstance(refused, Throttled)
    assert refused.retry_after == "0.01"  # wall seconds, exact: a scaled benchmark keeps its ratios
    clock.now += 0.005
    assert isinstance(knobs.admit(_read()).refusal, Throttled)
    clock.now += 0.005
    assert knobs.admit(_read()).refusal is None


def test_changing_the_time_scale_never_makes_sandbox_time_jump() -> None:
    clock = FakeClock()
    scale = TimeScale(1.0, clock)
    start = scale.now()
    clock.now += 2.0
    scale.factor = 10.0
    assert scale.now() == pytest.approx(start + 2.0)
    clock.now += 1.0
    assert scale.now() == pytest.approx(start + 12.0)
    assert scale.wall(5.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="timeScale"):
        scale.factor = 0


def test_a_refused_call_takes_no_token_from_the_other_buckets() -> None:
    clock = FakeClock()
    knobs = _knobs(clock, rate_limits={"msi-write-subscription": RateLimit(2.0, burst=2),
                                       "msi-write-identity": RateLimit(0.25, burst=1)})

    def write(identity: str) -> Call:
        return Call("PUT", "/x", "PUT federatedIdentityCredentials", "", True,
                    (("msi-write-subscription", "sub"), ("msi-write-identity", identity)))

    assert knobs.admit(write("rg/a")).refusal is None
    refused = knobs.admit(write("rg/a")).refusal
    assert isinstance(refused, Throttled)
    assert refused.limit == "msi-write-identity"
    assert refused.retry_after == "4"
    verdict = knobs.admit(write("rg/b"))  # the subscription still had its second token
    assert verdict.refusal is None
    assert verdict.remaining == {"msi-write-subscription": 0, "msi-write-identity": 0}


def test_latency_is_divided_by_the_time_scale_and_jitter_follows_its_seed() -> None:
    clock = FakeClock()
    assert _knobs(clock, factor=10.0, latency=0.5).admit(_read()).delay == pytest.approx(0.05)
    first = [_knobs(clock, latency=0.1, jitter=0.2, fault_seed=7).admit(_read()).delay for _ in range(3)]
    again = [_knobs(clock, latency=0.1, jitter=0.2, fault_seed=7).admit(_read()).delay for _ in range(3)]
    assert first == again
    assert all(0.1 <= d <= 0.3 for d in first)
    jittery = _knobs(clock, latency=0.1, jitter=0.2, fault_seed=7)
    assert len({jittery.admit(_read()).delay for _ in range(5)}) > 1


def test_random_faults_are_reproducible_from_their_seed_and_lose_only_writes() -> None:
    clock = FakeClock()

    def outcomes(seed: int, call: Call) -> list[str]:
        knobs = _knobs(clock, fault_rate=0.5, fault_seed=seed)
        found = []
        for _ in range(200):
            verdict = knobs.admit(call)
            found.append(type(verdict.refusal).__name__ if verdict.refusal else f"lost-{verdict.lose}"
                         if verdict.lose else "ok")
        return found

    writes = outcomes(7, _write())
    assert writes == outcomes(7, _write())
    assert writes != outcomes(8, _write())
    assert {"ok", "Throttled", "Failed", "lost-error", "lost-drop"} == set(writes)
    assert 60 < writes.count("ok") < 140
    assert not any(o.startswith("lost") for o in outcomes(7, _read()))  # a lost read is only a 5xx
    assert all(_knobs(clock, fault_rate=1.0).admit(_read()).refusal is not None for _ in range(20))


def test_armed_faults_hit_the_calls_their_filters_select() -> None:
    knobs = _knobs(FakeClock())
    knobs.throttle_next(1, retry_after=3.0, match=("CreatePodIdentity",))
    knobs.fail_next(2, status=503, match=("/pod-identity-associations",))
    assert knobs.admit(_write()).refusal == Throttled(None, "", "3")
    assert knobs.admit(_read()).refusal == Failed(503)
    assert knobs.admit(_write()).refusal == Failed(503)
    assert knobs.admit(_read()).refusal is None
    knobs.lose_next(1, mode="drop", match=("CreatePodIdentityAssociation",))
    assert knobs.take_lost(_read()) is None  # not selected: the fault waits
    assert knobs.faults().lose_remaining == 1
    assert knobs.take_lost(_write()) == "drop"
    assert knobs.faults().armed == ()
    with pytest.raises(ValueError, match="count"):
        knobs.throttle_next(-1)
    with pytest.raises(ValueError, match="status"):
        knobs.fail_next(1, status=200)


def test_denied_actions_match_ignoring_case_and_bad_ones_are_refused() -> None:
    knobs = Knobs("aws", TimeScale(clock=FakeClock()), check_action=lambda a: ":" in a, action_form="IAM actions")
    knobs.deny(["eks:listPodIdentityAssociations"])
    assert knobs.admit(_read()).refusal == Denied("eks:ListPodIdentityAssociations")
    assert knobs.faults().denied == ("eks:listPodIdentityAssociations",)
    with pytest.raises(ValueError, match="not IAM actions: nope"):
        knobs.deny(["nope"])
    knobs.allow([])
    assert knobs.admit(_read()).refusal is None


def test_calls_are_counted_per_operation_even_when_refused_and_can_be_reset() -> None:
    knobs = _knobs(FakeClock(), rate_limits={"eks-read": RateLimit(1.0, burst=1)})
    for _ in range(3):
        knobs.admit(_read())
    knobs.admit(_write())
    assert knobs.calls() == {"ListPodIdentityAssociations": 3, "CreatePodIdentityAssociation": 1}
    assert knobs.calls_by_method() == {"GET": 3, "POST": 1}
    assert [c.operation for c in knobs.history()][-1] == "CreatePodIdentityAssociation"
    knobs.reset_calls()
    assert knobs.calls() == {}
    assert knobs.history() == []


def test_settings_parse_from_the_json_the_routes_and_flags_send() -> None:
    realistic = parse_settings({"latency": "50ms", "rateLimits": "realistic", "faultRate": 0.1, "faultSeed": 7})
    assert realistic.latency == pytest.approx(0.05)
    assert realistic.rate_limits == REALISTIC_LIMITS
    assert realistic.rate_limits["msi-write-identity"] == RateLimit(0.25, 4)  # REFERENCE.md: 0.25/s per identity
    assert realistic.rate_limits["msi-write-subscription"] == RateLimit(2.0, 20)  # and 2/s per subscription
    changed = parse_settings({"rateLimits": {"kube": None, "eks-read": {"perSecond": 1, "burst": 3}}}, realistic)
    assert "kube" not in changed.rate_limits
    assert changed.rate_limits["eks-read"] == RateLimit(1.0, 3)
    assert changed.fault_seed == 7
    assert changed.latency == realistic.latency
    assert parse_settings({"rateLimits": "off"}, realistic).rate_limits == {}
    assert parse_duration("0.2s") == pytest.approx(0.2)
    assert parse_duration("2") == 2.0
    for bad, message in (({"latency": "soon"}, "not a duration"), ({"faultRate": 2}, "between 0 and 1"),
                         ({"rateLimits": {"nope": {"perSecond": 1}}}, "unknown rate limits nope"),
                         ({"rateLimits": {"kube": {"perSecond": 0}}}, "perSecond > 0"),
                         ({"speed": 1}, "unknown knobs speed"), ({"faultSeed": "x"}, "faultSeed")):
        with pytest.raises(ValueError, match=message):
            parse_settings(bad)


def test_a_propagation_schedule_is_drawn_from_its_seed_and_the_write_alone() -> None:
    flapping = Propagation(10.0, 20.0, flap_window=40.0, flap_rate=0.5)
    first = flapping.settling(7, "identity/credential#1")
    assert first == flapping.settling(7, "identity/credential#1")  # the same seed and write: the same schedule
    assert first != flapping.settling(8, "identity/credential#1")
    assert first != flapping.settling(7, "identity/credential#2")  # each write draws its own
    assert 10.0 <= first.delay <= 20.0
    for start, end in first.outages:  # outages fall in the window after the credential first took effect
        assert first.delay + 5.0 <= start < end <= first.delay + 40.0
    assert not first.in_effect(first.delay - 0.01)
    assert first.in_effect(first.delay)
    assert first.in_effect(first.settled)
    assert first.settled <= first.delay + 40.0
    steady = Propagation(3.0, 3.0).settling(7, "x")
    assert steady == Settling(3.0)
    assert steady.settled == 3.0


def test_propagation_knobs_parse_from_json_and_presets() -> None:
    parsed = parse_settings({"propagation": {"entra-credential": {"minDelay": "5s", "maxDelay": "2m",
                                                                  "flapWindow": 30, "flapRate": 0.25}},
                             "agentCache": "3h"})
    assert parsed.propagation["entra-credential"] == Propagation(5.0, 120.0, 30.0, 0.25)
    assert parsed.agent_cache == 10800.0
    assert parsed.settling("eks-association", "k") is None  # no knob: the stand-in's fixed delay
    assert parse_settings({"propagation": "realistic"}).propagation == REALISTIC_PROPAGATION
    assert parse_settings({"propagation": "off"}, parsed).propagation == {}
    assert parse_settings({"propagation": {"entra-credential": None}}, parsed).propagation == {}
    assert parse_settings({"latency": 1}, parsed).propagation == parsed.propagation  # kept when not given
    assert parsed.to_json()["propagation"]["entra-credential"]["maxDelay"] == 120.0
    for bad, why in (({"propagation": {"gcp-binding": {"minDelay": 1}}}, "unknown propagation"),
                     ({"propagation": {"entra-credential": {"minDelay": 5, "maxDelay": 1}}}, "minDelay <= maxDelay"),
                     ({"propagation": {"entra-credential": {"flapRate": 2, "minDelay": 1}}}, "flapRate"),
                     ({"propagation": "fast"}, "'off', 'realistic'"), ({"agentCache": -1}, "agentCache")):
        with pytest.raises(ValueError, match=why):
            parse_settings(bad)

"""Unit tests of the AWS provider's pure parts: trust policy analysis, ownership tags, tokens, errors, retries."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    SSLError,
)

from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.errors import CloudError
from keyless.federation import trust_statement
from keyless.iam_policy import TrustFinding, check_trust_policy, load_policy
from keyless.ownership import MANAGED_BY_KEYLESS, TAG_MANAGED_BY, Owner, owner_from_tags, ownership_tags
from keyless.porter.model import ServiceType
from keyless.providers.aws import create_request_token
from keyless.providers.aws_api import error_code, explain, is_role_not_propagated, is_transient
from keyless.providers.retry import NO_RETRY, RetryPolicy, call_with_retry, poll

POD = "pods.eks.amazonaws.com"


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(action: Any, principal: Any = None, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal if principal is not None else {"Service": POD},
            "Action": action, **extra}


# ---- trust policies -------------------------------------------------------------------------------


def test_the_documented_statement_passes() -> None:
    finding = check_trust_policy(_policy(trust_statement()))
    assert finding == TrustFinding()
    assert finding.ok


def test_action_as_a_single_string_misses_tag_session() -> None:
    finding = check_trust_policy(_policy(_allow("sts:AssumeRole")))
    assert finding.missing == ("sts:TagSession",)
    assert not finding.ok


def test_actions_split_over_two_statements_pass() -> None:
    assert check_trust_policy(_policy(_allow("sts:AssumeRole"), _allow(["sts:TagSession"]))).ok


@pytest.mark.parametrize("pattern", ["sts:*", "*", "STS:assumerole", "sts:?ssumeRole"])
def test_wildcards_and_case_cover_assume_role(pattern: str) -> None:
    finding = check_trust_policy(_policy(_allow([pattern, "sts:TagSession"])))
    assert finding.ok, pattern


def test_a_prefix_wildcard_covers_only_what_it_matches() -> None:
    assert check_trust_policy(_policy(_allow("sts:Assume*"))).missing == ("sts:TagSession",)


def test_missing_tag_session_is_reported_alone() -> None:
    finding = check_trust_policy(_policy(_allow(["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity"])))
    assert finding.missing == ("sts:TagSession",)
    assert finding.denied == ()


@pytest.mark.parametrize("principal", [
    {"Service": "ec2.amazonaws.com"},
    {"Service": "eks.amazonaws.com"},  # the cluster's service principal, a common mix-up
    {"AWS": "arn:aws:iam::123456789012:root"},
    {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/X"},
])
def test_a_wrong_principal_allows_nothing(principal: dict[str, Any]) -> None:
    finding = check_trust_policy(_policy(_allow(["sts:AssumeRole", "sts:TagSession"], principal)))
    assert finding.missing == ("sts:AssumeRole", "sts:TagSession")


@pytest.mark.parametrize("principal", [
    {"Service": ["ec2.amazonaws.com", POD]},
    {"Service": POD},
    "*",
    {"AWS": "*"},
])
def test_principal_as_string_list_or_wildcard(principal: Any) -> None:
    assert check_trust_policy(_policy(_allow(["sts:AssumeRole", "sts:TagSession"], principal))).ok


def test_statement_may_be_a_single_object() -> None:
    assert check_trust_policy({"Version": "2012-10-17", "Statement": trust_statement()}).ok


def test_an_unconditional_deny_wins_over_an_allow() -> None:
    deny = {"Effect": "Deny", "Principal": {"Service": POD}, "Action": "sts:TagSession"}
    finding = check_trust_policy(_policy(trust_statement(), deny))
    assert finding.denied == ("sts:TagSession",)
    assert finding.missing == ()
    assert not finding.ok


def test_a_deny_for_everyone_but_pods_does_not_hit_pods() -> None:
    deny = {"Effect": "Deny", "NotPrincipal": {"Service": POD}, "Action": "sts:*"}
    assert check_trust_policy(_policy(trust_statement(), deny)).ok


def test_a_deny_with_not_principal_naming_someone_else_hits_pods() -> None:
    deny = {"Effect": "Deny", "NotPrincipal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    assert check_trust_policy(_policy(trust_statement(), deny)).denied == ("sts:AssumeRole",)


def test_a_conditional_deny_is_reported_but_does_not_block() -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "sts:*",
            "Condition": {"StringNotEquals": {"aws:SourceAccount": "123456789012"}}}
    finding = check_trust_policy(_policy(trust_statement(), deny))
    assert finding.ok
    assert finding.conditional == ("sts:AssumeRole", "sts:TagSession")


def test_a_conditional_allow_counts_but_is_reported() -> None:
    allow = _allow(["sts:AssumeRole", "sts:TagSession"],
                   Condition={"StringEquals": {"aws:RequestTag/kubernetes-namespace": "shop"}})
    finding = check_trust_policy(_policy(allow))
    assert finding.ok
    assert finding.conditional == ("sts:AssumeRole", "sts:TagSession")


def test_not_action_in_an_allow() -> None:
    allow = {"Effect": "Allow", "Principal": {"Service": POD}, "NotAction": "sts:AssumeRoleWithSAML"}
    assert check_trust_policy(_policy(allow)).ok
    narrow = {"Effect": "Allow", "Principal": {"Service": POD}, "NotAction": "sts:TagSession"}
    assert check_trust_policy(_policy(narrow)).missing == ("sts:TagSession",)


def test_allow_with_not_principal_grants_nothing() -> None:
    odd = {"Effect": "Allow", "NotPrincipal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:*"}
    assert check_trust_policy(_policy(odd)).missing == ("sts:AssumeRole", "sts:TagSession")


def test_statements_without_effect_or_action_are_ignored() -> None:
    broken = [{"Principal": {"Service": POD}, "Action": "sts:*"}, {"Effect": "Allow", "Principal": "*"}]
    assert not check_trust_policy({"Statement": broken}).ok
    assert check_trust_policy({}).missing == ("sts:AssumeRole", "sts:TagSession")


def test_policy_documents_as_json_text_and_url_encoded_json() -> None:
    document = _policy(trust_statement())
    text = json.dumps(document)
    assert load_policy(text) == document
    assert load_policy(quote(text)) == document
    assert check_trust_policy(quote(text)).ok


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", 42, None, quote("{broken")])
def test_unreadable_documents_raise_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="policy document"):
        check_trust_policy(bad)


# ---- ownership tags -------------------------------------------------------------------------------


def test_ownership_tags_round_trip() -> None:
    owner = Owner(app="shop", service="api", target="prod-eks")
    tags = ownership_tags(owner)
    assert tags[TAG_MANAGED_BY] == MANAGED_BY_KEYLESS
    assert owner_from_tags(tags) == owner
    assert owner_from_tags({**tags, "team": "payments"}) == owner


def test_ownership_tags_fit_eks_tag_rules() -> None:
    # Longest names the naming rules allow: app 31, service 63, target 63 characters.
    tags = ownership_tags(Owner(app="a" * 31, service="s" * 63, target="t" * 63))
    allowed = re.compile(r"^[\w\s+\-=.:/@]*$")
    assert 1 <= len(tags) <= 50
    for key, value in tags.items():
        assert 1 <= len(key) <= 128
        assert len(value) <= 256
        assert not key.lower().startswith("aws:")
        assert allowed.match(key)
        assert allowed.match(value)


@pytest.mark.parametrize("tags", [
    None,
    {},
    {TAG_MANAGED_BY: "terraform", "keyless.dev/app": "shop", "keyless.dev/service": "api",
     "keyless.dev/target": "prod"},
    {TAG_MANAGED_BY: MANAGED_BY_KEYLESS, "keyless.dev/app": "shop", "keyless.dev/service": "api"},
    {TAG_MANAGED_BY: MANAGED_BY_KEYLESS, "keyless.dev/app": "", "keyless.dev/service": "api",
     "keyless.dev/target": "prod"},
])
def test_incomplete_or_foreign_tags_mean_no_owner(tags: dict[str, str] | None) -> None:
    assert owner_from_tags(tags) is None


# ---- request tokens -------------------------------------------------------------------------------


def _binding(namespace: str = "shop", service: str = "api") -> Binding:
    return Binding(app="shop", service=service, kind=ServiceType.WEB, target="prod", cloud=Cloud.AWS,
                   namespace=namespace, service_account=f"shop-{service}", identity=AwsRole("r"))


def test_request_token_is_stable_per_binding_and_attempt() -> None:
    role = "arn:aws:iam::123456789012:role/r"
    token = create_request_token("c", _binding(), role, "attempt-1")
    assert token == create_request_token("c", _binding(), role, "attempt-1")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", token)
    others = {
        create_request_token("c", _binding(), role, "attempt-2"),
        create_request_token("c", _binding(namespace="other"), role, "attempt-1"),
        create_request_token("c", _binding(service="web"), role, "attempt-1"),
        create_request_token("c", _binding(), role + "2", "attempt-1"),
        create_request_token("c2", _binding(), role, "attempt-1"),
    }
    assert token not in others
    assert len(others) == 5


# ---- error classification and messages -----------------------------------------------------------


def _client_error(code: str, message: str = "", status: int = 400) -> ClientError:
    """A ClientError shaped like the ones botocore raises from an HTTP error response."""
    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "AnyOperation")


@pytest.mark.parametrize(("error", "transient"), [
    (_client_error("ThrottlingException", "Rate exceeded", 429), True),
    (_client_error("Throttling", "Rate exceeded", 400), True),
    (_client_error("ServerException", "boom", 500), True),
    (_client_error("SomethingNew", "bad gateway", 502), True),
    (_client_error("ResourceInUseException", "exists", 409), False),
    (_client_error("AccessDeniedException", "no", 403), False),
    (_client_error("InvalidParameterException", "Role provided in the request does not exist"), False),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
    (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), True),
    (SSLError(endpoint_url="https://x", error=OSError("bad cert")), False),
    (ValueError("not an AWS error"), False),
])
def test_which_errors_are_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_role_not_propagated_is_recognised_only_for_eks_role_messages() -> None:
    assert is_role_not_propagated(_client_error("InvalidParameterException",
                                                "Role provided in the request does not exist"))
    assert not is_role_not_propagated(_client_error("InvalidParameterException", "namespace is invalid"))
    assert not is_role_not_propagated(_client_error("NoSuchEntity", "The role with name x cannot be found."))
    assert error_code(ValueError()) == ""


def test_explained_errors_carry_code_message_and_a_hint() -> None:
    error = explain(_client_error("AccessDeniedException", "not authorized to perform eks:Create", 403),
                    "creating the association for shop/shop-api")
    assert isinstance(error, CloudError)
    assert error.message == ("creating the association for shop/shop-api: AccessDeniedException: "
                             "not authorized to perform eks:Create")
    assert "iam:PassRole" in error.hint


def test_explained_errors_say_when_retries_gave_up() -> None:
    error = _client_error("ThrottlingException", "Rate exceeded", 429)
    error.add_note("gave up after 6 attempt(s) in 12.0s")
    explained = explain(error, "listing")
    assert "gave up after 6 attempt(s)" in explained.message
    assert "throttl" in explained.hint


def test_credential_errors_are_described_never_quoted() -> None:
    leaked = CredentialRetrievalError(provider="process", error_msg="AKIAFAKE/SECRETVALUE123")
    for error in (leaked, NoCredentialsError()):
        explained = explain(error, "reading IAM role 'r'")
        assert "SECRETVALUE123" not in explained.render()
        assert "no usable AWS credentials" in explained.message
        assert "AWS_PROFILE" in explained.hint


# ---- the retry helper -----------------------------------------------------------------------------


class _Clock:
    """A fake clock that sleeping advances: retries run instantly and their schedule can be read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def _retry(fn: Any, policy: RetryPolicy, clock: _Clock, draw: float = 0.5) -> Any:
    return call_with_retry(fn, policy=policy, retryable=lambda e: isinstance(e, TimeoutError),
                           sleep=clock.sleep, clock=clock.time, draw=lambda: draw)


def test_retries_until_success_with_growing_jittered_delays() -> None:
    clock = _Clock()
    flaky = _Flaky(3, TimeoutError("slow"))
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=3.0, deadline=60)
    assert _retry(flaky, policy, clock, draw=0.0) == "done"
    assert flaky.calls == 4
    assert clock.sleeps == [0.5, 1.0, 1.5]  # half of 1, 2, min(4, 3): the fixed half of "equal jitter"


def test_jitter_stays_within_half_to_full_ceiling() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    for retry in range(8):
        ceiling = min(8.0, 2.0**retry)
        assert ceiling / 2 <= policy.backoff(retry) <= ceiling
    assert policy.backoff(5000, lambda: 1.0) == 8.0  # no overflow for long polls


def test_attempts_are_bounded_and_the_last_error_says_so() -> None:
    clock = _Clock()
    flaky = _Flaky(100, TimeoutError("slow"))
    with pytest.raises(TimeoutError) as raised:
        _retry(flaky, RetryPolicy(max_attempts=3, base_delay=0.1, deadline=60), clock)
    assert flaky.calls == 3
    assert any("gave up after 3 attempt(s)" in note for note in raised.value.__notes__)


def test_the_deadline_bounds_the_total_time() -> None:
    clock = _Clock()
    flaky = _Flaky(100, TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        _retry(flaky, RetryPolicy(max_attempts=100, base_delay=1.0, max_delay=4.0, deadline=10.0), clock, 1.0)
    assert clock.sleeps == [1.0, 2.0, 4.0, 3.0]  # the last sleep is cut short to end at the deadline
    assert flaky.calls == 5


def test_errors_the_predicate_rejects_are_not_retried() -> None:
    clock = _Clock()
    flaky = _Flaky(1, KeyError("permanent"))
    with pytest.raises(KeyError):
        _retry(flaky, RetryPolicy(), clock)
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_no_retry_policy_tries_once() -> None:
    clock = _Clock()
    flaky = _Flaky(1, TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        _retry(flaky, NO_RETRY, clock)
    assert flaky.calls == 1


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(deadline=-1)


def test_poll_returns_true_once_the_check_holds_and_false_at_the_deadline() -> None:
    clock = _Clock()
    answers = iter([False, False, True])
    policy = RetryPolicy(max_attempts=1000, base_delay=0.5, max_delay=2.0, deadline=30)
    assert poll(lambda: next(answers), policy=policy, sleep=clock.sleep, clock=clock.time)
    clock = _Clock()
    assert not poll(lambda: False, policy=policy, sleep=clock.sleep, clock=clock.time)
    assert clock.now == pytest.approx(30.0)


def test_poll_lets_unexpected_errors_through() -> None:
    def broken() -> bool:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        poll(broken, policy=RetryPolicy(), sleep=lambda _: None)

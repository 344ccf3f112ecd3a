"""keyless.names: every naming rule, with plain values."""

from __future__ import annotations

import hashlib
import re

import pytest

from keyless import names
from keyless.names import NameRuleError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def rejected(check: object, value: str) -> NameRuleError:
    with pytest.raises(NameRuleError) as caught:
        check(value)  # type: ignore[operator]
    assert caught.value.message
    assert caught.value.hint, f"no hint for {value!r}"
    return caught.value


# --- Kubernetes names --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "api", "web-2", "0", "42-worker", "a" * 63])
def test_dns_labels_accepted(value: str) -> None:
    names.check_service_name(value)
    names.check_namespace(value)


@pytest.mark.parametrize(("value", "fragment"), [
    ("", "is empty"),
    ("A", "is not a valid name"),
    ("Api", "is not a valid name"),
    ("my_api", "is not a valid name"),
    ("-api", "is not a valid name"),
    ("api-", "is not a valid name"),
    ("api.v2", "is not a valid name"),
    ("a b", "is not a valid name"),
    ("ápi", "is not a valid name"),
    ("a" * 64, "is 64 characters long; the limit is 63"),
])
def test_dns_labels_rejected(value: str, fragment: str) -> None:
    assert fragment in rejected(names.check_service_name, value).message


@pytest.mark.parametrize("value", ["api\n", "shop\n", "a\r\n"])
def test_a_trailing_newline_is_not_part_of_a_valid_name(value: str) -> None:
    """`$` in Python regexes also matches before a final newline: `fullmatch` or `\\Z` is needed."""
    rejected(names.check_service_name, value)
    rejected(names.check_namespace, value)
    rejected(names.check_app_name, value)


def test_invalid_name_hint_suggests_a_valid_spelling() -> None:
    assert "'email-worker'" in rejected(names.check_service_name, "Email_Worker").hint
    assert "e.g." not in rejected(names.check_service_name, "___").hint


def test_app_names_follow_porter_31_character_limit() -> None:
    names.check_app_name("a" * 31)
    assert "the limit is 31" in rejected(names.check_app_name, "a" * 32).message
    assert "app name" in rejected(names.check_app_name, "My_App").message


# --- service account names ---------------------------------------------------------------------


def test_service_account_name_is_app_dash_service() -> None:
    assert names.service_account_name("shop", "api") == "shop-api"


def test_service_account_name_of_exactly_63_characters_is_kept() -> None:
    app, service = "a" * 31, "b" * 31
    assert names.service_account_name(app, service) == f"{app}-{service}"
    assert len(names.service_account_name(app, service)) == 63


@pytest.mark.parametrize(("app", "service"), [
    ("a" * 31, "b" * 32),
    ("shop", "x" * 63),
    ("a" * 31, "c" * 63),
    ("shop", "a-" * 30 + "z"),
    ("shop", "worker-" + "-" * 0 + "q" * 55),
])
def test_long_service_account_names_are_cut_with_a_stable_hash(app: str, service: str) -> None:
    name = names.service_account_name(app, service)
    assert len(name) <= 63
    assert DNS_LABEL.match(name), name
    assert "--" not in name[-10:]
    expected_suffix = hashlib.sha256(f"{app}\x00{service}".encode()).hexdigest()[:8]
    assert name.endswith("-" + expected_suffix)
    assert name == names.service_account_name(app, service)  # stable
    assert name.startswith(f"{app}-"[: len(name) - 9].rstrip("-"))


def test_long_service_account_names_stay_unique() -> None:
    app = "shop"
    services = [f"{'order-fulfilment-notifications-dispatcher-worker-v'}{i:02d}-{'x' * 20}" for i in range(50)]
    accounts = {names.service_account_name(app, s) for s in services}
    assert len(accounts) == len(services)
    # the same service in two apps, and (app, service) pairs whose joined text is equal
    assert names.service_account_name("a" * 40, "b" * 30) != names.service_account_name("a" * 41, "b" * 29)
    assert names.service_account_name("shop", services[0]) != names.service_account_name("shop2", services[0])


def test_service_account_name_hash_is_a_known_value() -> None:
    """Pinned: changing it would orphan every association keyless created with the old names."""
    assert names.service_account_name("shop", "x" * 59) == "shop-" + "x" * 49 + "-2b11a873"


def test_short_hash() -> None:
    assert names.short_hash("a", "b") == hashlib.sha256(b"a\x00b").hexdigest()[:8]
    assert names.short_hash("a", "b", length=12) != names.short_hash("ab")
    assert len(names.short_hash("x", length=12)) == 12


# --- AWS IAM roles -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "name", "path", "partition", "account"), [
    ("api", "api", "/", None, None),
    ("  api  ", "api", "/", None, None),
    ("shop-api+rw=1,x.y@z_", "shop-api+rw=1,x.y@z_", "/", None, None),
    ("r" * 64, "r" * 64, "/", None, None),
    ("service-role/api", "api", "/service-role/", None, None),
    ("/service-role/api", "api", "/service-role/", None, None),
    ("/a/b/c/api", "api", "/a/b/c/", None, None),
    ("/a/b/api/", "api", "/a/b/", None, None),
    ("arn:aws:iam::123456789012:role/api", "api", "/", "aws", "123456789012"),
    ("arn:aws:iam::123456789012:role/service-role/api", "api", "/service-role/", "aws", "123456789012"),
    ("arn:aws-cn:iam::123456789012:role/api", "api", "/", "aws-cn", "123456789012"),
    ("arn:aws-cn:iam::123456789012:role/teams/shop/api", "api", "/teams/shop/", "aws-cn", "123456789012"),
    ("arn:aws-us-gov:iam::123456789012:role/api", "api", "/", "aws-us-gov", "123456789012"),
    ("arn:aws-us-gov:iam::000000000000:role/x/y/api", "api", "/x/y/", "aws-us-gov", "000000000000"),
])
def test_parse_role_accepts_every_form(value: str, name: str, path: str, partition: str | None,
                                       account: str | None) -> None:
    ref = names.parse_role(value)
    assert (ref.name, ref.path, ref.partition, ref.account) == (name, path, partition, account)
    assert ref.is_arn is (account is not None)


def test_role_ref_builds_its_arn_in_the_target_partition_and_account() -> None:
    assert names.parse_role("service-role/api").arn_in("aws", "111111111111") == \
        "arn:aws:iam::111111111111:role/service-role/api"
    assert names.parse_role("api").arn_in("aws-cn", "222222222222") == "arn:aws-cn:iam::222222222222:role/api"
    arn = "arn:aws-us-gov:iam::123456789012:role/gov/api"
    assert names.parse_role(arn).arn_in("aws", "999999999999") == arn  # an ARN keeps its own


@pytest.mark.parametrize(("value", "fragment"), [
    ("", "`role` is empty"),
    ("   ", "`role` is empty"),
    ("arn:aws:iam", "is not a valid ARN"),
    ("arn:aws-iso:iam::123456789012:role/api", "unknown AWS partition 'aws-iso'"),
    ("arn:AWS:iam::123456789012:role/api", "unknown AWS partition 'AWS'"),
    ("arn::iam::123456789012:role/api", "unknown AWS partition ''"),
    ("arn:aws:iam::123456789012:user/bob", "is an ARN for iam:user, not an IAM role"),
    ("arn:aws:iam::123456789012:instance-profile/api", "is an ARN for iam:instance-profile"),
    ("arn:aws:s3:::bucket", "is an ARN for s3:bucket"),
    ("arn:aws:sts::123456789012:assumed-role/api/session", "is an assumed-role session, not a role"),
    ("arn:aws-cn:sts::123456789012:assumed-role/api/session", "is an assumed-role session"),
    ("arn:aws:iam:us-east-1:123456789012:role/api", "IAM ARNs have no region"),
    ("arn:aws:iam::12345678901:role/api", "is not a 12-digit AWS account ID"),
    ("arn:aws:iam::123456789012:role/", "IAM role name '' is not valid"),
    ("arn:aws:iam::123456789012:role/my role", "IAM role name 'my role' is not valid"),
    ("my role", "IAM role name 'my role' is not valid"),
    ("r" * 65, "is not valid"),
    ("rôle", "is not valid"),
    ("api#1", "is not valid"),
    ("service-role/", "IAM role name '' is not valid"),
    ("a b/api", "IAM role path '/a b/' is not valid"),
    ("/" + "p/" * 260 + "api", "IAM role path"),
])
def test_parse_role_rejects(value: str, fragment: str) -> None:
    assert fragment in rejected(names.parse_role, value).message


@pytest.mark.parametrize("account", ["1234567890123", "12345678901a", "", "１２３４５６７８９０１２"])
def test_arn_account_ids_are_12_ascii_digits(account: str) -> None:
    with pytest.raises(NameRuleError) as caught:
        names.parse_role(f"arn:aws:iam::{account}:role/api")
    assert "is not a 12-digit AWS account ID" in caught.value.message


# --- Azure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "shop-api", "shop_api_01", "0-id", "A" * 128])
def test_identity_names_accepted(value: str) -> None:
    names.check_identity_name(value)


@pytest.mark.parametrize("value", [
    "ab", "A" * 129, "-shop", "_shop", "shop/api", "shop/../other", "shop?x=1", "shop#frag", "shop%2Fx",
    "shop.api", "..", "shop api", "shop\\api", "shop&x", "", "shop\n",
])
def test_identity_names_rejected(value: str) -> None:
    err = rejected(names.check_identity_name, value)
    assert "managed identity name" in err.message


@pytest.mark.parametrize("value", ["rg", "r", "rg-shop_prod.1", "(rg)", "Ledger.Prod(EastUS)_2", "r" * 90, "grüppe"])
def test_resource_groups_accepted(value: str) -> None:
    names.check_resource_group(value)


@pytest.mark.parametrize("value", [
    "", "r" * 91, "rg.", "..", ".", "rg/other", "../../subscriptions/x", "rg?api-version=1", "rg#x", "rg%2F",
    "rg other", "rg\\x", "rg&x", "rg\n", "rg\t",
])
def test_resource_groups_rejected_so_no_value_changes_an_arm_url(value: str) -> None:
    err = rejected(names.check_resource_group, value)
    assert "resource group name" in err.message


def test_federated_credential_names() -> None:
    names.check_federated_credential_name("keyless-shop-api")
    names.check_federated_credential_name("a" * 120)
    for bad in ("ab", "a" * 121, "-abc", "abc.def", "abc/def"):
        rejected(names.check_federated_credential_name, bad)


def test_subscription_ids() -> None:
    names.check_subscription_id("00000000-0000-0000-0000-000000000000")
    names.check_subscription_id("ABCDEF01-2345-6789-abcd-ef0123456789")
    for bad in ("", "abc", "00000000000000000000000000000000", "00000000-0000-0000-0000-00000000000g",
                "00000000-0000-0000-0000-000000000000\n"):
        rejected(names.check_subscription_id, bad)


# --- Google Cloud ------------------------------------------------------------------------------


@pytest.mark.parametrize(("email", "project"), [
    ("shop-api@shop-prod.iam.gserviceaccount.com", "shop-prod"),
    ("abcdef@abcdef.iam.gserviceaccount.com", "abcdef"),
    ("a" + "b" * 29 + "@p" + "q" * 29 + ".iam.gserviceaccount.com", "p" + "q" * 29),
])
def test_service_account_emails_accepted(email: str, project: str) -> None:
    account = names.parse_service_account_email(email)
    assert (account.email, account.project, account.is_default) == (email, project, False)


def test_default_service_accounts_are_flagged() -> None:
    compute = names.parse_service_account_email("123456789012-compute@developer.gserviceaccount.com")
    assert (compute.project, compute.is_default) == (None, True)
    appspot = names.parse_service_account_email("shop-prod@appspot.gserviceaccount.com")
    assert (appspot.project, appspot.is_default) == ("shop-prod", True)


def test_domain_scoped_project_service_accounts_are_accepted() -> None:
    """Projects like `google.com:skia-buildbots` have emails NAME@PROJECT.DOMAIN.iam.gserviceaccount.com."""
    account = names.parse_service_account_email("status@skia-buildbots.google.com.iam.gserviceaccount.com")
    assert account.project == "google.com:skia-buildbots"


@pytest.mark.parametrize(("email", "fragment"), [
    ("Shop-API@shop-prod.iam.gserviceaccount.com", "has uppercase letters"),
    ("shop-api@SHOP-prod.iam.gserviceaccount.com", "has uppercase letters"),
    ("shop-api@shop-prod.gserviceaccount.com", "is not a Google service account email"),
    ("shop-api@shop-prod.iam.gserviceaccount.com.evil.com", "is not a Google service account email"),
    ("alice@example.com", "is not a Google service account email"),
    ("shop-api.shop-prod.iam.gserviceaccount.com", "is not a Google service account email"),
    ("", "is not a Google service account email"),
    ("api@shop-prod.iam.gserviceaccount.com", "service account name 'api' is not valid"),
    ("1shop-api@shop-prod.iam.gserviceaccount.com", "service account name"),
    ("shop-api-@shop-prod.iam.gserviceaccount.com", "service account name"),
    ("shop_api@shop-prod.iam.gserviceaccount.com", "service account name"),
    ("shop-api@prod.iam.gserviceaccount.com", "is not a valid project ID"),
    ("shop-api@1shop-prod.iam.gserviceaccount.com", "is not a valid project ID"),
    ("shop-api@@shop-prod.iam.gserviceaccount.com", "shop-api@@shop-prod"),
])
def test_service_account_emails_rejected(email: str, fragment: str) -> None:
    assert fragment in rejected(names.parse_service_account_email, email).message


def test_a_service_account_email_with_a_trailing_newline_is_rejected_or_cleaned() -> None:
    value = "shop-api@shop-prod.iam.gserviceaccount.com\n"
    try:
        account = names.parse_service_account_email(value)
    except NameRuleError:
        return
    assert "\n" not in account.email


@pytest.mark.parametrize(("value", "ok"), [
    ("shop-prod", True), ("abcdef", True), ("a" + "b" * 29, True),
    ("abcde", False), ("a" + "b" * 30, False), ("Shop-prod", False), ("1shop", False), ("shop-", False),
    ("shop_prod", False),
])
def test_project_ids(value: str, ok: bool) -> None:
    if ok:
        names.check_project_id(value)
    else:
        rejected(names.check_project_id, value)


@pytest.mark.parametrize(("value", "valid"), [
    ("a-4fqq1eyvqhmv1bjz0", True), ("a-x", True),
    ("", False), ("a-", False), ("b-4fqq1eyvqhmv1bjz0", False), ("a-../../clusters", False), ("a-ABC", False),
    ("a-" + "x" * 65, False)])
def test_an_association_id_read_from_an_annotation_reaches_a_url_only_if_it_is_one(value: str, valid: bool) -> None:
    assert names.is_association_id(value) is valid

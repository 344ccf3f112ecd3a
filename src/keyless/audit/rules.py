"""The catalogue of audit rules: stable IDs, severities, what each means and how to fix it."""

from __future__ import annotations

from keyless.audit.model import FindingSeverity, Rule
from keyless.federation import POD_IDENTITY_SERVICE

# --- AWS: the role's trust policy --------------------------------------------------------------

AWS_TRUST_PUBLIC = Rule(
    "AWS-TRUST-PUBLIC", "aws", FindingSeverity.ERROR,
    "The trust policy lets any principal assume the role",
    "A Principal of \"*\" (or {\"AWS\": \"*\"}) lets every AWS account try to assume the role; only conditions "
    "stand between the service's permissions and the world.",
    f"Make the statement's Principal exactly {{\"Service\": \"{POD_IDENTITY_SERVICE}\"}}.")
AWS_TRUST_PRINCIPAL = Rule(
    "AWS-TRUST-PRINCIPAL", "aws", FindingSeverity.WARNING,
    f"The trust policy trusts principals other than {POD_IDENTITY_SERVICE}",
    "Another service, account or identity provider that can assume the role gets the service's permissions "
    "outside the pod; a leftover IRSA (OIDC) statement is the usual case.",
    f"Remove the other principals, so that only {POD_IDENTITY_SERVICE} is trusted; give the other user its own role.")
AWS_TRUST_NOTPRINCIPAL = Rule(
    "AWS-TRUST-NOTPRINCIPAL", "aws", FindingSeverity.ERROR,
    "The trust policy allows with NotPrincipal",
    "Allow with NotPrincipal trusts every principal except the ones listed.",
    f"Replace NotPrincipal with \"Principal\": {{\"Service\": \"{POD_IDENTITY_SERVICE}\"}}.")
AWS_TRUST_TAGSESSION = Rule(
    "AWS-TRUST-TAGSESSION", "aws", FindingSeverity.ERROR,
    f"The trust policy does not allow {POD_IDENTITY_SERVICE} both sts:AssumeRole and sts:TagSession",
    "EKS Pod Identity assumes the role with session tags; without sts:TagSession pods get no credentials.",
    f"Allow {POD_IDENTITY_SERVICE} the actions [\"sts:AssumeRole\", \"sts:TagSession\"].")
AWS_TRUST_ACTIONS = Rule(
    "AWS-TRUST-ACTIONS", "aws", FindingSeverity.WARNING,
    "The trust policy grants EKS Pod Identity more than sts:AssumeRole and sts:TagSession",
    "Pod Identity needs exactly these two actions; wildcards or NotAction also allow other ways of assuming the "
    "role.",
    "Set the statement's Action to exactly [\"sts:AssumeRole\", \"sts:TagSession\"].")
AWS_TRUST_SCOPE = Rule(
    "AWS-TRUST-SCOPE", "aws", FindingSeverity.INFO,
    "The trust policy does not pin the account, cluster, namespace and service account",
    "Without conditions any EKS cluster of any account that is told the role ARN can bind it to any service "
    "account; the session tags EKS sends (aws:RequestTag/...) and aws:SourceAccount narrow it to this binding.",
    "Add the condition block the finding shows (filled in for this cluster, namespace and service account).")

# --- AWS: the role's permissions ---------------------------------------------------------------

AWS_PERM_WILDCARD_ACTION = Rule(
    "AWS-PERM-WILDCARD-ACTION", "aws", FindingSeverity.ERROR,
    "A statement allows every action (\"*\") or every action of a service (\"s3:*\")",
    "Wildcard actions grant every present and future action, including deleting data and changing policies.",
    "List the actions the service calls instead of the wildcard.")
AWS_PERM_ACTION_PATTERN = Rule(
    "AWS-PERM-ACTION-PATTERN", "aws", FindingSeverity.INFO,
    "A statement allows actions by a partial wildcard (\"s3:Get*\")",
    "A pattern grants every action that matches it, now and in the future, often more than was meant.",
    "Replace the pattern with the actions the service calls (the finding lists what it expands to today).")
AWS_PERM_RESOURCE_STAR = Rule(
    "AWS-PERM-RESOURCE-STAR", "aws", FindingSeverity.WARNING,
    "A statement allows, on Resource \"*\", actions that accept resource ARNs",
    "These actions can be limited to named resources; on \"*\" they reach every such resource in the account. "
    "(Actions that only work on \"*\", like sts:GetCallerIdentity, are not reported.)",
    "Replace \"*\" with the ARNs of the resources the service uses (the finding shows the ARN formats).")
AWS_PERM_PASSROLE_STAR = Rule(
    "AWS-PERM-PASSROLE-STAR", "aws", FindingSeverity.ERROR,
    "A statement allows iam:PassRole on every role",
    "Passing any role to a service (EC2, Lambda, ECS...) lets the pod run code with that role's permissions, "
    "including an administrator's.",
    "Limit iam:PassRole to the ARNs of the roles the service must pass, with an iam:PassedToService condition.")
AWS_PERM_PERMISSIONS_MGMT = Rule(
    "AWS-PERM-PERMISSIONS-MGMT", "aws", FindingSeverity.WARNING,
    "A statement allows permissions-management actions",
    "Actions of the \"Permissions management\" access level change who may do what (resource policies, grants, "
    "IAM); a workload rarely needs them.",
    "Remove them, or limit them to the named resources the service owns.")
AWS_PERM_PRIVESC = Rule(
    "AWS-PERM-PRIVESC", "aws", FindingSeverity.ERROR,
    "The role can escalate its own privileges",
    "The role holds every action of a known escalation method (keyless.audit.escalation): editing IAM policies "
    "or other users' credentials, passing a role to new compute (iam:PassRole with ec2:RunInstances, "
    "lambda:CreateFunction, ...), or changing compute that already runs with a role (lambda:UpdateFunctionCode, "
    "ssm:SendCommand, ...). The finding names each method; it is a warning when every grant it needs is limited by a "
    "scoping condition (iam:PassedToService, aws:ResourceAccount, aws:ResourceTag/...), and info when it only "
    "reaches the caller's own IAM user.",
    "Remove the actions the finding lists; if the service really launches compute, give it iam:PassRole on exactly "
    "the role it passes, under an iam:PassedToService condition.")
AWS_PERM_NOTACTION = Rule(
    "AWS-PERM-NOTACTION", "aws", FindingSeverity.ERROR,
    "A statement allows with NotAction",
    "Allow with NotAction grants every action except those listed, including actions AWS adds later.",
    "Replace NotAction with an Action list of what the service calls.")
AWS_PERM_NOTRESOURCE = Rule(
    "AWS-PERM-NOTRESOURCE", "aws", FindingSeverity.WARNING,
    "A statement allows with NotResource",
    "Allow with NotResource applies to every resource except those listed, including ones created later.",
    "Replace NotResource with a Resource list of the ARNs the service uses.")
AWS_PERM_RESOURCE_WILDCARD_ARN = Rule(
    "AWS-PERM-RESOURCE-WILDCARD-ARN", "aws", FindingSeverity.WARNING,
    "A statement names a resource ARN that is \"*\" in all but spelling",
    "An ARN with wildcards for region, account and the whole resource part (arn:*:cloudtrail:*:*:trail/*, "
    "arn:aws:s3:::*) reaches every such resource, exactly like \"*\".",
    "Name the resources the service uses, with the account, region and resource name filled in.")
AWS_PERM_RESOURCE_MISMATCH = Rule(
    "AWS-PERM-RESOURCE-MISMATCH", "aws", FindingSeverity.WARNING,
    "A statement names an action with resources it cannot act on",
    "Each action applies to certain resource types (s3:GetObject to objects, bucket/key, not to the bucket); "
    "when no Resource of the statement can be of those types, the statement grants nothing for that action and "
    "the service fails, or someone later widens the resource to \"*\".",
    "Give the action an ARN of a type it acts on (the finding shows the formats), usually in its own statement.")
AWS_PERM_UNKNOWN_ACTION = Rule(
    "AWS-PERM-UNKNOWN-ACTION", "aws", FindingSeverity.WARNING,
    "A statement names an action that does not exist",
    "IAM accepts any action name, so a typo (s3:GetObjects, iam:list) is saved without complaint: an Allow then "
    "lacks the permission it was meant to give, and a Deny protects nothing.",
    "Correct the spelling (the finding suggests the nearest actions that exist) or remove it.")
AWS_PERM_CONDITION_SET_OPERATOR = Rule(
    "AWS-PERM-CONDITION-SET-OPERATOR", "aws", FindingSeverity.WARNING,
    "A condition uses ForAllValues or ForAnyValue on a single-valued key",
    "Set operators are for multivalued keys (aws:TagKeys, aws:CalledVia). On a single-valued key ForAllValues is "
    "also true when the key is absent, so an Allow can apply to requests it was meant to exclude.",
    "Use the plain operator (StringEquals, StringLike...) for single-valued keys.")
AWS_PERM_CONDITION_KEY = Rule(
    "AWS-PERM-CONDITION-KEY", "aws", FindingSeverity.WARNING,
    "A condition tests a key that none of the statement's actions sets",
    "A request only carries the service keys its action supports; a key no action sets is always absent, so the "
    "condition either never matches (the grant is dead) or, with a negated or IfExists operator, always does "
    "(the grant has no limit).",
    "Use a key the actions support (the finding lists them) or a global aws: key, or move the condition to the "
    "statement whose actions set it.")
AWS_PERM_CREDENTIALS = Rule(
    "AWS-PERM-CREDENTIALS", "aws", FindingSeverity.WARNING,
    "A statement allows actions that return credentials",
    "Actions such as ecr:GetAuthorizationToken, redshift:GetClusterCredentials or iam:CreateAccessKey answer with "
    "tokens, passwords or keys that work outside the pod and outlive it.",
    "Remove them unless the service needs them, and limit them to the resources it uses.")

# --- Azure -------------------------------------------------------------------------------------

AZ_SCOPE_SUBSCRIPTION = Rule(
    "AZ-SCOPE-SUBSCRIPTION", "azure", FindingSeverity.WARNING,
    "The identity has a role assignment at subscription scope or above",
    "An assignment at subscription (or management group) scope applies to every resource in it, present and "
    "future.",
    "Assign the role on the resource the service uses, then delete the broad assignment.")
AZ_SCOPE_RESOURCE_GROUP = Rule(
    "AZ-SCOPE-RESOURCE-GROUP", "azure", FindingSeverity.INFO,
    "The identity has a role assignment at resource-group scope",
    "An assignment on a resource group applies to every resource in the group, present and future.",
    "Assign the role on the resource the service uses, then delete the group-wide assignment.")
AZ_PRIVILEGED_ROLE = Rule(
    "AZ-PRIVILEGED-ROLE", "azure", FindingSeverity.ERROR,
    "The identity holds a privileged role",
    "Owner, Contributor, User Access Administrator and Role Based Access Control Administrator (and custom roles "
    "with \"*\" or role-assignment write actions) can manage everything in scope or grant themselves more.",
    "Replace it with a role limited to what the service does, usually a data-plane role on one resource.")
AZ_CONTROL_PLANE_ROLE = Rule(
    "AZ-CONTROL-PLANE-ROLE", "azure", FindingSeverity.WARNING,
    "The identity holds a control-plane role where a data-plane role exists",
    "Control-plane roles manage the resource itself and often can read its keys (listKeys), which bypasses "
    "data-plane RBAC; a data-plane role grants only data access.",
    "Assign the data-plane role the finding names instead.")

# --- GCP ---------------------------------------------------------------------------------------

GCP_BASIC_ROLE = Rule(
    "GCP-BASIC-ROLE", "gcp", FindingSeverity.ERROR,
    "The Google service account holds a basic role (roles/owner or roles/editor)",
    "Basic roles grant thousands of permissions across every service of the project.",
    "Grant predefined roles limited to what the service uses, on the resources it uses, and remove the basic "
    "role.")
GCP_PROJECT_GRANT = Rule(
    "GCP-PROJECT-GRANT", "gcp", FindingSeverity.WARNING,
    "The Google service account is granted a role on a whole project (or folder, or organization)",
    "A project-level grant applies to every resource of the project, present and future.",
    "Grant the role on the resource the service uses (bucket, topic, secret...) and remove the project-level "
    "binding.")

GCP_PROJECT_ADMIN_ROLE = Rule(
    "GCP-PROJECT-ADMIN-ROLE", "gcp", FindingSeverity.ERROR,
    "The Google service account holds an admin role on a whole project (or folder, or organization)",
    "An admin role (roles/*.admin, roles/*Admin) manages every resource of its service in the project, and often "
    "their IAM policies too.",
    "Grant the narrowest predefined role the service needs (a viewer, user or data role) on the resource it uses, "
    "and remove the admin role.")
GCP_PROJECT_IMPERSONATION = Rule(
    "GCP-PROJECT-IMPERSONATION", "gcp", FindingSeverity.ERROR,
    "The Google service account may act as every service account of a project",
    "roles/iam.serviceAccountTokenCreator or roles/iam.serviceAccountUser granted on the project lets it mint "
    "tokens for (or deploy as) any service account there, including more privileged ones.",
    "Grant the role on the one service account it must act as (`gcloud iam service-accounts "
    "add-iam-policy-binding`), and remove the project-level binding.")
GCP_USER_MANAGED_KEY = Rule(
    "GCP-USER-MANAGED-KEY", "gcp", FindingSeverity.ERROR,
    "The Google service account has a user-managed key",
    "A downloaded key is a static credential that works from anywhere until it is deleted: exactly what workload "
    "identity exists to avoid.",
    "Delete the key (`gcloud iam service-accounts keys delete KEY_ID --iam-account EMAIL`) once nothing uses it; "
    "workloads on GKE get tokens through Workload Identity instead.")

# --- every cloud -------------------------------------------------------------------------------

SHARED_IDENTITY = Rule(
    "SHARED-IDENTITY", "any", FindingSeverity.WARNING,
    "One identity is used by several services or apps",
    "Services that share an identity share their permissions: each gets what all of them need, and a "
    "compromise of one reaches the others' data.",
    "Give each service its own role, managed identity or Google service account with only what it needs.")
AUDIT_INCOMPLETE = Rule(
    "AUDIT-INCOMPLETE", "any", FindingSeverity.WARNING,
    "keyless could not read everything it needs to audit the identity",
    "Part of the identity's policies or assignments could not be read, so the audit may miss problems.",
    "Grant keyless the read permissions listed in docs/AUDIT.md, or fix the identity reference.")

ALL_RULES: tuple[Rule, ...] = (
    AWS_TRUST_PUBLIC, AWS_TRUST_PRINCIPAL, AWS_TRUST_NOTPRINCIPAL, AWS_TRUST_TAGSESSION, AWS_TRUST_ACTIONS,
    AWS_TRUST_SCOPE,
    AWS_PERM_WILDCARD_ACTION, AWS_PERM_ACTION_PATTERN, AWS_PERM_RESOURCE_STAR, AWS_PERM_PASSROLE_STAR,
    AWS_PERM_PERMISSIONS_MGMT, AWS_PERM_PRIVESC, AWS_PERM_NOTACTION, AWS_PERM_NOTRESOURCE,
    AZ_SCOPE_SUBSCRIPTION, AZ_SCOPE_RESOURCE_GROUP, AZ_PRIVILEGED_ROLE, AZ_CONTROL_PLANE_ROLE,
    GCP_BASIC_ROLE, GCP_PROJECT_GRANT, GCP_PROJECT_ADMIN_ROLE, GCP_PROJECT_IMPERSONATION, GCP_USER_MANAGED_KEY,
    SHARED_IDENTITY, AUDIT_INCOMPLETE,
    # Added later: appended, so that every earlier rule keeps its ruleIndex in SARIF logs.
    AWS_PERM_RESOURCE_WILDCARD_ARN, AWS_PERM_RESOURCE_MISMATCH, AWS_PERM_UNKNOWN_ACTION,
    AWS_PERM_CONDITION_SET_OPERATOR, AWS_PERM_CONDITION_KEY, AWS_PERM_CREDENTIALS,
)

RULES_BY_ID = {rule.id: rule for rule in ALL_RULES}

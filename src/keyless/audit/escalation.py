"""Known ways an AWS identity can raise its own privileges, as data: the actions each needs and how to close it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PASS_ROLE = "iam:passrole"


@dataclass(frozen=True, slots=True)
class EscalationMethod:
    """One escalation path: holding every action in `actions` (plus iam:PassRole when `passes_role`) opens it."""

    name: str  # stable, kebab-case; findings name it
    actions: frozenset[str]  # lower-case "service:action", all needed
    passes_role: bool  # launching NEW compute needs a role to hand it; changing EXISTING compute does not
    explanation: str
    fix: str

    @property
    def needs(self) -> frozenset[str]:
        """Every action the method needs, iam:PassRole included when it passes a role."""
        return self.actions | {PASS_ROLE} if self.passes_role else self.actions


def _m(name: str, actions: Iterable[str], passes_role: bool, explanation: str, fix: str) -> EscalationMethod:
    return EscalationMethod(name, frozenset(a.lower() for a in actions), passes_role, explanation, fix)


_USER_FIX = "drop it, or limit Resource to users that are no more privileged than this role"
_POLICY_FIX = "drop it; a workload should never edit IAM policies, least of all its own"
_PASS_FIX = ("limit iam:PassRole to the one role the service launches with, under an iam:PassedToService "
             "condition, or drop the launching action")
_EXISTING_FIX = "limit it to resources whose role is no more privileged than this one, or drop it"

# The union of the methods Rhino Security Labs published (which Parliament's privilege-escalation auditor and
# Cloudsplaining both use), the paths Cloudsplaining 0.9 adds from pathfinding.cloud, and a few more that change
# existing compute. Where two tools need different action sets for the same path, the smaller set is kept, so
# that a policy either peer calls escalation is called so here too.
METHODS: tuple[EscalationMethod, ...] = (
    # --- IAM: credentials of other users
    _m("iam-create-access-key", ["iam:CreateAccessKey"], False,
       "mints access keys for another IAM user and acts as that user", _USER_FIX),
    _m("iam-create-login-profile", ["iam:CreateLoginProfile"], False,
       "sets a console password for a user that has none and signs in as them", _USER_FIX),
    _m("iam-update-login-profile", ["iam:UpdateLoginProfile"], False,
       "resets another user's console password and signs in as them", _USER_FIX),
    _m("iam-add-user-to-group", ["iam:AddUserToGroup"], False,
       "adds a user it controls to a more privileged group", _USER_FIX),
    # --- IAM: editing policies
    _m("iam-create-policy-version", ["iam:CreatePolicyVersion"], False,
       "writes a new default version of a managed policy attached to itself", _POLICY_FIX),
    _m("iam-set-default-policy-version", ["iam:SetDefaultPolicyVersion"], False,
       "switches a managed policy back to an older, broader version", _POLICY_FIX),
    _m("iam-attach-user-policy", ["iam:AttachUserPolicy"], False,
       "attaches any managed policy (AdministratorAccess) to a user", _POLICY_FIX),
    _m("iam-attach-group-policy", ["iam:AttachGroupPolicy"], False,
       "attaches any managed policy to a group it belongs to", _POLICY_FIX),
    _m("iam-attach-role-policy", ["iam:AttachRolePolicy"], False,
       "attaches any managed policy to a role, its own included", _POLICY_FIX),
    _m("iam-put-user-policy", ["iam:PutUserPolicy"], False,
       "writes an inline policy of its choosing on a user", _POLICY_FIX),
    _m("iam-put-group-policy", ["iam:PutGroupPolicy"], False,
       "writes an inline policy of its choosing on a group", _POLICY_FIX),
    _m("iam-put-role-policy", ["iam:PutRolePolicy"], False,
       "writes an inline policy of its choosing on a role, its own included", _POLICY_FIX),
    _m("iam-update-assume-role-policy", ["iam:UpdateAssumeRolePolicy"], False,
       "rewrites another role's trust policy so that it can assume that role",
       "drop it; trust policies are changed by whoever deploys, not by the workload"),
    # --- passing a role to new compute
    _m("ec2-run-instances", ["ec2:RunInstances"], True,
       "starts an instance with a passed instance profile and reads its credentials from the metadata service",
       _PASS_FIX),
    _m("ec2-request-spot-instances", ["ec2:RequestSpotInstances"], True,
       "requests a spot instance with a passed instance profile", _PASS_FIX),
    _m("lambda-create-function", ["lambda:CreateFunction"], True,
       "creates a function that runs its code as the passed role (invoked directly, by an event source or a "
       "resource policy)", _PASS_FIX),
    _m("glue-create-dev-endpoint", ["glue:CreateDevEndpoint"], True,
       "creates a Glue development endpoint with the passed role and logs in to it over SSH", _PASS_FIX),
    _m("glue-create-job", ["glue:CreateJob"], True,
       "creates a Glue job that runs its script as the passed role (started directly or by a trigger)", _PASS_FIX),
    _m("glue-update-job", ["glue:UpdateJob"], True,
       "points an existing Glue job at the passed role and its own script", _PASS_FIX),
    _m("cloudformation-create-stack", ["cloudformation:CreateStack"], True,
       "creates a stack whose resources are made with the passed role's permissions", _PASS_FIX),
    _m("cloudformation-create-stack-set", ["cloudformation:CreateStackSet", "cloudformation:CreateStackInstances"],
       True, "deploys a stack set administered through the passed role", _PASS_FIX),
    _m("cloudformation-update-stack-set", ["cloudformation:UpdateStackSet"], True,
       "re-points an existing stack set at the passed role and its own template", _PASS_FIX),
    _m("datapipeline-create-pipeline", ["datapipeline:CreatePipeline"], True,
       "creates a pipeline whose activities run commands as the passed role", _PASS_FIX),
    _m("apprunner-create-service", ["apprunner:CreateService"], True,
       "creates an App Runner service whose instances run as the passed role", _PASS_FIX),
    _m("bedrock-create-code-interpreter",
       ["bedrock-agentcore:CreateCodeInterpreter", "bedrock-agentcore:StartCodeInterpreterSession",
        "bedrock-agentcore:InvokeCodeInterpreter"], True,
       "creates a code interpreter with the passed role and runs code in it", _PASS_FIX),
    _m("codebuild-create-project", ["codebuild:CreateProject"], True,
       "creates a build project with the passed service role and runs a build of its own commands", _PASS_FIX),
    _m("ecs-register-task-definition", ["ecs:RegisterTaskDefinition"], True,
       "registers a task definition with the passed task role and runs it (RunTask, StartTask or a service)",
       _PASS_FIX),
    _m("sagemaker-create-notebook-instance", ["sagemaker:CreateNotebookInstance"], True,
       "creates a notebook instance with the passed role and opens a shell in it", _PASS_FIX),
    _m("sagemaker-create-training-job", ["sagemaker:CreateTrainingJob"], True,
       "runs a training job (its own container) as the passed role", _PASS_FIX),
    _m("sagemaker-create-processing-job", ["sagemaker:CreateProcessingJob"], True,
       "runs a processing job (its own container) as the passed role", _PASS_FIX),
    # --- changing compute that already runs with a role: no iam:PassRole needed
    _m("glue-update-dev-endpoint", ["glue:UpdateDevEndpoint"], False,
       "adds its SSH key to an existing Glue development endpoint and uses that endpoint's role", _EXISTING_FIX),
    _m("lambda-update-function-code", ["lambda:UpdateFunctionCode"], False,
       "replaces an existing function's code, which then runs with that function's role", _EXISTING_FIX),
    _m("lambda-update-function-configuration", ["lambda:UpdateFunctionConfiguration"], False,
       "adds a layer or a wrapper to an existing function, which then runs its code with that function's role",
       _EXISTING_FIX),
    _m("cloudformation-execute-change-set",
       ["cloudformation:CreateChangeSet", "cloudformation:ExecuteChangeSet"], False,
       "changes an existing stack, whose resources are then made with the stack's service role", _EXISTING_FIX),
    _m("ec2-modify-user-data",
       ["ec2:ModifyInstanceAttribute", "ec2:StopInstances", "ec2:StartInstances"], False,
       "rewrites an instance's user data and restarts it, running its script as the instance's role",
       _EXISTING_FIX),
    _m("ec2-modify-launch-template", ["ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"], False,
       "makes a new default launch template version (user data) that auto scaling then starts with its role",
       _EXISTING_FIX),
    _m("ec2-instance-connect", ["ec2-instance-connect:SendSSHPublicKey"], False,
       "pushes an SSH key to an existing instance, logs in and uses the instance's role", _EXISTING_FIX),
    _m("ssm-send-command", ["ssm:SendCommand"], False,
       "runs a command on an existing managed instance, which reaches that instance's role", _EXISTING_FIX),
    _m("ssm-start-session", ["ssm:StartSession"], False,
       "opens a shell on an existing managed instance, which reaches that instance's role", _EXISTING_FIX),
    _m("ecs-execute-command", ["ecs:ExecuteCommand"], False,
       "opens a shell in a running task and uses the task's role", _EXISTING_FIX),
    _m("codebuild-start-build", ["codebuild:StartBuild"], False,
       "starts a build of an existing project with a buildspec override, run as the project's role",
       _EXISTING_FIX),
    _m("codebuild-start-build-batch", ["codebuild:StartBuildBatch"], False,
       "starts a batch build of an existing project with a buildspec override, run as the project's role",
       _EXISTING_FIX),
    _m("sagemaker-presigned-notebook-url", ["sagemaker:CreatePresignedNotebookInstanceUrl"], False,
       "opens an existing notebook instance's Jupyter and uses its role", _EXISTING_FIX),
    _m("sagemaker-notebook-lifecycle-config",
       ["sagemaker:CreateNotebookInstanceLifecycleConfig", "sagemaker:UpdateNotebookInstance"], False,
       "attaches a lifecycle script to an existing notebook instance, which runs it with its role on restart",
       _EXISTING_FIX),
    _m("bedrock-code-interpreter-session",
       ["bedrock-agentcore:StartCodeInterpreterSession", "bedrock-agentcore:InvokeCodeInterpreter"], False,
       "runs code in an existing code interpreter, with that interpreter's role", _EXISTING_FIX),
)

METHODS_BY_NAME = {method.name: method for method in METHODS}


def open_methods(allowed: frozenset[str] | set[str]) -> list[EscalationMethod]:
    """The methods whose every needed action is in `allowed` (lower-case action names)."""
    return [method for method in METHODS if method.needs <= allowed]

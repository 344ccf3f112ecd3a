"""The Plan: a value you can print, diff, save and test (model), its saved form (planfile), its text (render),
and how it is computed from desired and observed state (planner). Import the submodules you need."""

from keyless.plan.model import (
    AccountSpec,
    Action,
    ActionKind,
    Blocker,
    Intent,
    ObjectRef,
    Observed,
    ObservedBinding,
    ObservedServiceAccount,
    ObservedWorkload,
    Plan,
    PodTemplateSettings,
    Refresh,
    Resource,
)

__all__ = [
    "AccountSpec",
    "Action",
    "ActionKind",
    "Blocker",
    "Intent",
    "ObjectRef",
    "Observed",
    "ObservedBinding",
    "ObservedServiceAccount",
    "ObservedWorkload",
    "Plan",
    "PodTemplateSettings",
    "Refresh",
    "Resource",
]

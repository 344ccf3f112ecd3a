"""keyless: cloud identities for Kubernetes services, without static keys."""

__version__ = "0.1.0"

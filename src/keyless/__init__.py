"""keyless: cloud identities for Kubernetes services, without static keys."""

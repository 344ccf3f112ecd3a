"""The cluster's service-account token issuer: an RSA key, signed projected tokens, OIDC discovery documents."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_EXPIRATION_SECONDS = 3600
MIN_EXPIRATION_SECONDS = 600  # the API server refuses shorter projected tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


@dataclass(frozen=True)
class BoundObject:
    """The pod (and its node) a projected token is bound to; it ends up in the ``kubernetes.io`` claim."""

    pod_name: str
    pod_uid: str
    node_name: str = ""
    node_uid: str = ""


class ServiceAccountIssuer:
    """Signs service-account tokens like the API server's ``--service-account-issuer``."""

    def __init__(self, issuer_url: str, key: rsa.RSAPrivateKey | None = None) -> None:
        # The issuer is compared byte for byte by the clouds' token exchanges: keep it exactly as given.
        self.issuer_url = issuer_url
        self._key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # Kubernetes derives the key id from the public key the same way, so rotating keys changes it.
        self.key_id = _b64url(hashlib.sha256(der).digest())

    @classmethod
    def load_or_create(cls, issuer_url: str, key_file: Path | None) -> ServiceAccountIssuer:
        """Reuse the signing key kept in ``key_file`` (so a restarted sandbox keeps its JWKS), or make one."""
        if key_file is not None and key_file.exists():
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{key_file} does not hold an RSA private key")
            return cls(issuer_url, loaded)
        issuer = cls(issuer_url)
        if key_file is not None:
            key_file.parent.mkdir(parents=True, exist_ok=True)
            pem = issuer._key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        return issuer

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def public_key_pem(self) -> str:
        return self.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def jwks(self) -> dict[str, Any]:
        numbers = self.public_key().public_numbers()
        return {
            "keys": [{
                "use": "sig",
                "kty": "RSA",
                "kid": self.key_id,
                "alg": "RS256",
                "n": _b64url(_uint_bytes(numbers.n)),
                "e": _b64url(_uint_bytes(numbers.e)),
            }]
        }

    def discovery(self, jwks_uri: str) -> dict[str, Any]:
        """The ``/.well-known/openid-configuration`` document."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def mint(
        self,
        *,
        namespace: str,
        service_account: str,
        service_account_uid: str,
        audiences: Sequence[str],
        expiration_seconds: int = DEFAULT_EXPIRATION_SECONDS,
        bound: BoundObject | None = None,
        now: float | None = None,
    ) -> str:
        """A signed token with the claims the API server puts in projected and TokenRequest tokens."""
        issued = int(time.time() if now is None else now)
        claim: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": service_account_uid},
        }
        if bound is not None:
            claim["pod"] = {"name": bound.pod_name, "uid": bound.pod_uid}
            if bound.node_name:
                claim["node"] = {"name": bound.node_name, "uid": bound.node_uid}
        payload: dict[str, Any] = {
            "aud": list(audiences),
            "exp": issued + max(expiration_seconds, MIN_EXPIRATION_SECONDS),
            "iat": issued,
            "nbf": issued,
            "iss": self.issuer_url,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": claim,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.key_id})

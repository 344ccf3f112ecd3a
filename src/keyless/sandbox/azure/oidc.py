"""OIDC issuers as Entra ID meets them: AKS's issuer host, TLS names for it, and Entra's HTTPS fetch of their keys.

On Azure, an AKS cluster's service-account issuer is `https://<region>.oic.prod-aks.azure.com/<tenant>/<id>/`, a
host Azure runs (not the cluster's API server), and Entra ID fetches `<issuer>/.well-known/openid-configuration`,
then its `jwks_uri`, over HTTPS to verify a pod's token; if it cannot, the exchange fails with AADSTS90061. The
sandbox does the same over real HTTPS: published issuers are served by the Entra front under their own host names
(a certificate per name from the sandbox CA), and Entra's client resolves those names to that front, as DNS would.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import trustme
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

__all__ = ["AKS_ISSUER_HOST_SUFFIX", "IssuerDirectory", "IssuerFetcher", "aks_issuer_url", "sni_server_context"]

# AKS's issuers live under <region>.oic.prod-aks.azure.com (AKS documentation, "Create an OIDC provider").
AKS_ISSUER_HOST_SUFFIX: Final = ".oic.prod-aks.azure.com"
_LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "::1")
_FETCH_TIMEOUT: Final = 5.0
_KEYS_TTL: Final = 60.0  # seconds Entra keeps an issuer's keys before fetching them again (a key it lacks: at once)

JwksSupplier = Callable[[], Mapping[str, Any]]


def aks_issuer_url(location: str, tenant_id: str, cluster_id: str) -> str:
    """The issuer URL AKS assigns a cluster when its OIDC issuer is enabled, trailing slash included."""
    return f"https://{location.lower()}{AKS_ISSUER_HOST_SUFFIX}/{tenant_id}/{cluster_id}/"


def _base(issuer_url: str) -> str:
    return issuer_url.rstrip("/")


@dataclass(frozen=True)
class _Published:
    issuer_url: str
    jwks: JwksSupplier


class IssuerDirectory:
    """The issuers the sandbox hosts (AKS clusters' and its own), served by URL: discovery document and JWKS."""

    def __init__(self) -> None:
        self._issuers: dict[str, _Published] = {}
        self._lock = threading.Lock()

    def publish(self, issuer_url: str, jwks: JwksSupplier) -> None:
        """Serve `issuer_url`'s discovery document and keys (`jwks()` is read at each request, as keys rotate)."""
        if urllib.parse.urlsplit(issuer_url).scheme != "https":
            raise ValueError(f"an OIDC issuer must be https: {issuer_url}")
        with self._lock:
            self._issuers[_base(issuer_url)] = _Published(issuer_url, jwks)

    def withdraw(self, issuer_url: str) -> None:
        with self._lock:
            self._issuers.pop(_base(issuer_url), None)

    def hosts(self) -> frozenset[str]:
        """The host names of published issuers that are not loopback addresses (the names DNS would resolve)."""
        with self._lock:
            names = {urllib.parse.urlsplit(p.issuer_url).hostname or "" for p in self._issuers.values()}
        return frozenset(n for n in names if n and n not in _LOOPBACK_NAMES)

    def document(self, url: str) -> dict[str, Any] | None:
        """What the issuer host answers for `url` (scheme, host and path), or None for a 404."""
        with self._lock:
            published = list(self._issuers.items())
        for base, issuer in published:
            if url == f"{base}/.well-known/openid-configuration":
                return {
                    "issuer": issuer.issuer_url,
                    "jwks_uri": f"{base}/openid/v1/jwks",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            if url == f"{base}/openid/v1/jwks":
                return dict(issuer.jwks())
        return None


def sni_server_context(ca: trustme.CA, directory: IssuerDirectory) -> ssl.SSLContext:
    """A server context for loopback that also presents a certificate for each published issuer's host name."""
    default = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*_LOOPBACK_NAMES).configure_cert(default)
    per_name: dict[str, ssl.SSLContext] = {}
    lock = threading.Lock()

    def choose(connection: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        if not name or (name not in directory.hosts() and not name.endswith(AKS_ISSUER_HOST_SUFFIX)):
            return None
        with lock:
            context = per_name.get(name)
            if context is None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ca.issue_cert(name).configure_cert(context)
                per_name[name] = context
        connection.context = context
        return None

    default.sni_callback = choose
    return default


class _IssuerHostResolver(AbstractResolver):
    """DNS for Entra's client: published issuer hosts (and AKS's issuer domain) are the sandbox's issuer host."""

    def __init__(self, directory: IssuerDirectory, address: Callable[[], tuple[str, int]]) -> None:
        self._directory = directory
        self._address = address
        self._fallback = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if host in self._directory.hosts() or host.endswith(AKS_ISSUER_HOST_SUFFIX):
            address, bound = self._address()
            return [ResolveResult(hostname=host, host=address, port=bound, family=socket.AF_INET, proto=0,
                                  flags=socket.AI_NUMERICHOST)]
        return await self._fallback.resolve(host, port, family)

    async def close(self) -> None:
        await self._fallback.close()


class IssuerFetcher:
    """Entra's side: fetch an issuer's discovery document, then its keys, over HTTPS; None when it cannot."""

    def __init__(self, directory: IssuerDirectory, address: Callable[[], tuple[str, int]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._directory = directory
        self._address = address
        self._clock = clock
        self._trusted: list[str] = []  # PEM of the CAs Entra trusts besides the public roots (the sandbox's own)
        self._cache: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self.fetches = 0  # HTTP requests made, for tests that count them

    def trust(self, ca_pem: str) -> None:
        """Trust certificates this CA signs (the sandbox's, or a Kubernetes stand-in's serving its own issuer)."""
        if ca_pem not in self._trusted:
            self._trusted.append(ca_pem)

    def forget(self) -> None:
        self._cache.clear()

    async def keys(self, issuer: str, key_id: str | None) -> Mapping[str, Any] | None:
        cached = self._cache.get(issuer)
        if cached is not None and self._clock() < cached[0] and (
                key_id is None or any(k.get("kid") == key_id for k in cached[1].get("keys") or [])):
            return cached[1]
        fetched = await self._fetch(issuer)
        if fetched is not None:
            self._cache[issuer] = (self._clock() + _KEYS_TTL, fetched)
        return fetched

    async def _fetch(self, issuer: str) -> Mapping[str, Any] | None:
        if urllib.parse.urlsplit(issuer).scheme != "https":
            return None  # Entra only fetches issuers over https
        context = ssl.create_default_context()
        for pem in self._trusted:
            context.load_verify_locations(cadata=pem)
        connector = aiohttp.TCPConnector(ssl=context, resolver=_IssuerHostResolver(self._directory, self._address))
        timeout = aiohttp.ClientTimeout(total=_FETCH_TIMEOUT)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                discovery = await self._get_json(session, f"{_base(issuer)}/.well-known/openid-configuration")
                # OpenID Connect Discovery 1.0 section 4.3: the document's issuer must be the one asked for.
                if not isinstance(discovery, dict) or discovery.get("issuer") != issuer:
                    return None
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str) or urllib.parse.urlsplit(jwks_uri).scheme != "https":
                    return None
                keys = await self._get_json(session, jwks_uri)
        except (TimeoutError, aiohttp.ClientError, ValueError, ssl.SSLError, OSError):
            return None
        return keys if isinstance(keys, dict) and isinstance(keys.get("keys"), list) else None

    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> Any:
        self.fetches += 1
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url}: HTTP {response.status}")
            return await response.json(content_type=None)

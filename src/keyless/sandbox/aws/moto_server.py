"""The in-process moto server and the boto3 clients the sandbox's own servers use to consult it."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sts import STSClient

# moto maps any access key it does not know to its default account; "test" is the usual choice.
TEST_ACCESS_KEY = "test"
TEST_SECRET_KEY = "test"
DEFAULT_ACCOUNT = "123456789012"


class MotoServer:
    """moto's threaded server on a loopback port: IAM, STS and EKS clusters for every account."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server: Any = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.url = ""

    def start(self) -> None:
        # werkzeug logs every request at INFO; a sandbox left running should not flood the terminal.
        werkzeug = logging.getLogger("werkzeug")
        if werkzeug.level == logging.NOTSET:
            werkzeug.setLevel(logging.WARNING)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


class MotoClients:
    """Cached, thread-safe boto3 clients pointed at moto, one per (service, account, region)."""

    def __init__(self, moto_url: str) -> None:
        self._url = moto_url
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, str], Any] = {}
        # Failing fast matters more than riding out blips: moto is in-process and never throttles.
        self._config = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=5, read_timeout=30)

    def _client(self, service: str, account: str, region: str) -> Any:
        key = (service, account, region)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = boto3.client(
                    service,  # type: ignore[call-overload]
                    endpoint_url=self._url,
                    region_name=region,
                    aws_access_key_id=TEST_ACCESS_KEY,
                    aws_secret_access_key=TEST_SECRET_KEY,
                    config=self._config,
                )
                if account != DEFAULT_ACCOUNT:
                    # moto picks the account from this header before it looks at the access key.
                    def add_account(request: Any, **_: Any) -> None:
                        request.headers["x-moto-account-id"] = account

                    client.meta.events.register(f"before-send.{service}.*", add_account)
                self._clients[key] = client
            return client

    def iam(self, account: str = DEFAULT_ACCOUNT) -> IAMClient:
        client: IAMClient = self._client("iam", account, "us-east-1")
        return client

    def eks(self, region: str, account: str = DEFAULT_ACCOUNT) -> EKSClient:
        client: EKSClient = self._client("eks", account, region)
        return client

    def sts(self, region: str, account: str = DEFAULT_ACCOUNT) -> STSClient:
        client: STSClient = self._client("sts", account, region)
        return client

    def sts_as(self, region: str, access_key: str, secret_key: str, token: str) -> STSClient:
        """An STS client holding temporary credentials, to chain a second AssumeRole like EKS does."""
        client: STSClient = boto3.client(
            "sts",
            endpoint_url=self._url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
            config=self._config,
        )
        return client

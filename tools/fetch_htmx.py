"""Fetch the pinned htmx release from the npm registry, verify it, and put it where the dashboard serves it."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# The pinned release and the hashes it was checked against when pinned: the npm registry's dist.integrity
# of the tarball (Subresource Integrity form), and the sha256 of each file we take out of it.
HTMX_VERSION = "2.0.11"
TARBALL_INTEGRITY = "sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA=="
FILES = {
    # name in the tarball -> (name in the vendor folder, sha256 of its content)
    "package/dist/htmx.min.js": ("htmx.min.js", "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"),
    "package/LICENSE": ("htmx.LICENSE", "d3d2456f76414f2456104660ebd65aff1c04cd7966b942bdabd63f3cdb316a38"),
}

DEFAULT_REGISTRY = "https://registry.npmjs.org"
DEFAULT_DEST = Path(__file__).resolve().parent.parent / "src" / "keyless" / "server" / "static" / "vendor"
ATTEMPTS = 3
TIMEOUT_SECONDS = 60


class FetchError(Exception):
    """A download, verification or write that failed; the message says which and why."""


def sha256_of(path: Path) -> str | None:
    """The sha256 of a file's content, or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def up_to_date(dest: Path) -> bool:
    """True when every vendored file is there with the pinned content."""
    return all(sha256_of(dest / name) == digest for name, digest in FILES.values())


def registry_url() -> str:
    """The registry set in NPM_CONFIG_REGISTRY (as npm reads it), else the public npm registry."""
    return (os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")


def download(url: str) -> bytes:
    """The body at url, retrying transient failures a few times."""
    last: Exception | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise FetchError(f"GET {url} answered HTTP {exc.code} {exc.reason}") from exc
            last = exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            last = exc
        if attempt < ATTEMPTS:
            time.sleep(2 * attempt)
    raise FetchError(f"GET {url} failed after {ATTEMPTS} attempts: {last}")


def verify_integrity(data: bytes, integrity: str) -> None:
    """Check data against an npm dist.integrity string ("sha512-<base64>")."""
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")
    if actual != expected:
        raise FetchError(f"tarball integrity mismatch: expected {integrity}, got {algorithm}-{actual}")


def extract(tarball: bytes) -> dict[str, bytes]:
    """The pinned files out of the tarball, keyed by their vendor-folder name, each checked against its sha256."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            for member, (name, digest) in FILES.items():
                handle = archive.extractfile(member)
                if handle is None:
                    raise FetchError(f"{member} in the tarball is not a regular file")
                content = handle.read()
                if hashlib.sha256(content).hexdigest() != digest:
                    raise FetchError(f"{member}: sha256 is not the pinned {digest}")
                files[name] = content
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise FetchError(f"cannot read the tarball: {exc}") from exc
    return files


def write_atomically(path: Path, content: bytes) -> None:
    """Write content to path so that a reader never sees a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(dest: Path) -> bool:
    """Put the pinned htmx files in dest; False when they were already there, True when fetched."""
    if up_to_date(dest):
        return False
    url = f"{registry_url()}/htmx.org/-/htmx.org-{HTMX_VERSION}.tgz"
    tarball = download(url)
    verify_integrity(tarball, TARBALL_INTEGRITY)
    files = extract(tarball)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            write_atomically(dest / name, content)
    except OSError as exc:
        raise FetchError(f"cannot write into {dest}: {exc}") from exc
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="vendor folder (default: %(default)s)")
    args = parser.parse_args(argv)
    dest: Path = args.dest
    try:
        fetched = fetch(dest)
    except FetchError as exc:
        print(f"fetch_htmx: error: htmx.org@{HTMX_VERSION}: {exc}", file=sys.stderr)
        print(
            f"fetch_htmx: the dashboard needs {dest / 'htmx.min.js'}; it comes from the npm registry "
            f"({registry_url()}, or set NPM_CONFIG_REGISTRY): fix the above, then run python tools/fetch_htmx.py",
            file=sys.stderr,
        )
        return 1
    if fetched:
        print(f"fetch_htmx: htmx.org@{HTMX_VERSION} verified and written to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

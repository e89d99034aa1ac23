"""The configured S3-compatible bucket (S3, R2, MinIO): checked before anything transfers.

``$LORA_LAB_BUCKET`` names it as ``s3://BUCKET/PREFIX``; everything lora_lab keeps there lies under
that prefix (:func:`within` refuses any other URL). The endpoint of a store other than AWS comes
from ``$LORA_LAB_BUCKET_ENDPOINT``, else botocore's own ``$AWS_ENDPOINT_URL_S3`` /
``$AWS_ENDPOINT_URL``; credentials are found as botocore finds them (``$AWS_ACCESS_KEY_ID`` and
``$AWS_SECRET_ACCESS_KEY``, ``$AWS_PROFILE``, ``~/.aws/credentials``, an instance role).

s3fs (the ``[bucket]`` extra) is imported only here, and only when a bucket is opened.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import LoraLabError

ENV_URL = "LORA_LAB_BUCKET"
ENV_ENDPOINT = "LORA_LAB_BUCKET_ENDPOINT"
# one try and short timeouts for the check: a wrong endpoint is said in seconds, not after
# botocore's retry loop; transfers get a few retries (a pod's network does drop connections)
CHECK_CONFIG = {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 1}}
TRANSFER_CONFIG = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}

# S3's bucket naming rules (R2 and MinIO follow them): 3-63 of a-z 0-9 . -, alphanumeric ends
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class BucketURL:
    """``s3://bucket/prefix`` split and checked; ``prefix`` has no leading or trailing slash."""
    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` joined under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))


def parse_url(url: str) -> BucketURL:
    """Split an ``s3://`` URL, refusing other schemes, a bad bucket name, and ``.``/``..``
    segments or empty ones (``a//b``), which stores resolve differently."""
    if not isinstance(url, str) or not url.strip():
        raise LoraLabError(f"no bucket URL given: set ${ENV_URL} to s3://BUCKET/PREFIX or pass --bucket")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "s3":
        raise LoraLabError(f"bucket URL {url!r} is not an s3:// URL: give s3://BUCKET/PREFIX "
                           "(R2 and MinIO too: their endpoint goes in $LORA_LAB_BUCKET_ENDPOINT)")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise LoraLabError(f"bucket URL {url!r}: {bucket!r} is not a bucket name (3-63 lowercase "
                           "letters, digits, '.' or '-')")
    prefix = prefix.rstrip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or "\\" in prefix or "\x00" in prefix:
        raise LoraLabError(f"bucket URL {url!r} has an empty, '.' or '..' path segment; refused")
    return BucketURL(bucket, prefix)


def within(url: str, prefix: str | BucketURL) -> BucketURL:
    """``url`` parsed, if it lies in ``prefix`` (the configured bucket URL); refused otherwise,
    including a sibling such as ``s3://b/data-evil`` for the prefix ``s3://b/data``."""
    inner = parse_url(url)
    outer = prefix if isinstance(prefix, BucketURL) else parse_url(prefix)
    inside = inner.bucket == outer.bucket and (
        not outer.prefix or inner.prefix == outer.prefix or inner.prefix.startswith(outer.prefix + "/"))
    if not inside:
        raise LoraLabError(f"{url} is outside the configured bucket {outer}; refused")
    return inner


def configured_url(url: str | None = None) -> str:
    """``url`` (a ``--bucket`` flag), else ``$LORA_LAB_BUCKET``."""
    chosen = url or os.environ.get(ENV_URL, "")
    if not chosen:
        raise LoraLabError(f"no bucket configured: set ${ENV_URL}=s3://BUCKET/PREFIX or pass --bucket")
    return chosen


def endpoint() -> str | None:
    """The S3 endpoint of a store other than AWS (R2, MinIO), or None for AWS itself."""
    return (os.environ.get(ENV_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


class Bucket:
    """An opened, checked bucket: :attr:`url` and :attr:`fs` (an ``s3fs.S3FileSystem``)."""

    def __init__(self, url: BucketURL, fs: Any, endpoint_url: str | None):
        self.url = url
        self.fs = fs
        self.endpoint = endpoint_url

    def __repr__(self) -> str:
        return f"Bucket({str(self.url)!r})"

    def path(self, *parts: str) -> str:
        """The s3fs path (``bucket/key``, no scheme) of ``parts`` under the prefix."""
        return f"{self.url.bucket}/{self.url.key(*parts)}".rstrip("/")


def open_bucket(url: str | None = None) -> Bucket:
    """The configured bucket (or ``url``), after one cheap request proved the credentials and
    the bucket: every mistake is one line, said before anything transfers."""
    parsed = parse_url(configured_url(url))
    try:
        import s3fs
    except ImportError:
        raise LoraLabError("buckets need s3fs: pip install 'lora_lab[bucket]'") from None
    import botocore.session

    session = botocore.session.Session()
    if session.get_credentials() is None:
        raise LoraLabError(f"no credentials for bucket {parsed}: set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials)")
    ep = endpoint()
    _check(session, parsed, ep)
    # no listings cache: a job folder's objects change under us, and a stale listing makes
    # s3fs take a new object for a missing one
    fs = s3fs.S3FileSystem(endpoint_url=ep, config_kwargs=TRANSFER_CONFIG, skip_instance_cache=True,
                           use_listings_cache=False)
    return Bucket(parsed, fs, ep)


def _check(session: Any, url: BucketURL, ep: str | None) -> None:
    """List one key under the prefix: the credentials, the bucket and the endpoint in one go."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    where = f" at {ep}" if ep else ""
    try:
        client = session.create_client("s3", endpoint_url=ep, config=Config(**CHECK_CONFIG))
        client.list_objects_v2(Bucket=url.bucket, Prefix=url.key() and url.key() + "/", MaxKeys=1)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        raise LoraLabError(_refusal(code, url, where) or f"bucket {url}{where} refused the request: "
                           f"{code or e}") from None
    except EndpointConnectionError:
        raise LoraLabError(f"cannot reach the bucket endpoint{where or ' (AWS S3)'}: check "
                           f"${ENV_ENDPOINT} / AWS_ENDPOINT_URL and the network") from None
    except (BotoCoreError, ValueError) as e:  # a malformed endpoint URL, a timeout, ...
        raise LoraLabError(f"bucket {url}{where}: {e}") from None


def _refusal(code: str, url: BucketURL, where: str) -> str | None:
    if code in ("InvalidAccessKeyId", "InvalidClientTokenId"):
        return (f"bucket {url}{where} does not know this access key: check AWS_ACCESS_KEY_ID "
                "(and that it belongs to this store)")
    if code == "SignatureDoesNotMatch":
        return f"bucket {url}{where} refused the secret key: check AWS_SECRET_ACCESS_KEY"
    if code == "NoSuchBucket":
        return f"bucket {url.bucket!r} does not exist{where}: create it, or fix ${ENV_URL}"
    if code in ("AccessDenied", "AllAccessDisabled", "ExpiredToken", "InvalidToken"):
        return f"bucket {url}{where} denied access ({code}): these credentials may not list it"
    return None

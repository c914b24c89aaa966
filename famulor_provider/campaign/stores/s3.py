"""S3 and S3-compatible stores as an :class:`~famulor_provider.campaign.stores.ObjectStore`.

Through Airflow's Amazon provider (``pip install 'airflow-provider-famulor[amazon]'``): its
``S3Hook`` builds the client from an AWS connection (keys, a role, ``endpoint_url`` in the extra
for R2, MinIO, Ceph ...; a missing connection falls back to boto3's own chain: environment,
IRSA / pod identity, instance profile). Imported only when a ledger is on ``s3://``.

Create-only writes are ``PutObject`` with ``If-None-Match: *`` (Amazon S3 since August 2024):
``412 PreconditionFailed`` says the key is taken; ``409 ConditionalRequestConflict`` (another
create of the same key in flight) is tried again until one of them wins. Errors that no retry
can fix (no bucket, access denied, refused credentials) are a :class:`FamulorValidationError`
naming the fix; the rest a :class:`FamulorError` (a later try may succeed).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from famulor_provider.campaign.stores import ObjectStore
from famulor_provider.exceptions import FamulorError, FamulorValidationError

if TYPE_CHECKING:
    from collections.abc import Iterator

PERMISSIONS = "s3:ListBucket, s3:GetObject and s3:PutObject"
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidObjectState"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}
_CONFLICT_RETRIES = 5


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as ``(bucket, "prefix/")`` (``""`` for no prefix)."""
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not bucket or parts.query or parts.fragment:
        raise FamulorValidationError(
            "ledger_path", f"an S3 ledger_path is s3://bucket or s3://bucket/prefix, got {uri!r}"
        )
    return bucket, f"{prefix}/" if prefix else ""


class S3ObjectStore(ObjectStore):
    """One bucket through an AWS connection.

    :param bucket: the bucket.
    :param conn_id: the Airflow AWS connection (``ledger_conn_id``).
    :param client: a boto3 S3 client to use instead of the connection's (tests, benchmarks).
    """

    def __init__(self, bucket: str, conn_id: str = "aws_default", client: Any = None) -> None:
        self.bucket = bucket
        self.conn_id = conn_id
        self.client = client if client is not None else s3_client(conn_id)
        # As many reads at once as the client keeps connections (botocore: 10, or the connection's
        # extra {"config_kwargs": {"max_pool_connections": N}}), less two for the writes.
        pool = getattr(getattr(self.client, "meta", None), "config", None)
        self.parallel_reads = max(1, int(getattr(pool, "max_pool_connections", 10) or 10) - 2)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def create(self, key: str, data: bytes) -> bool:
        for _ in range(_CONFLICT_RETRIES):
            try:
                self._call(
                    "s3:PutObject",
                    key,
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    ContentType="application/x-ndjson",
                )
                return True
            except _Taken as taken:
                if not taken.in_flight:
                    return False
            time.sleep(0.05)  # another create of this key is in flight: one of them wins
        return False

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            page = self._call("s3:ListBucket", prefix, self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents") or ():
                yield item["Key"]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def read(self, key: str) -> bytes:
        answer = self._call("s3:GetObject", key, self.client.get_object, Bucket=self.bucket, Key=key)
        return answer["Body"].read()

    def _call(self, action: str, key: str, method: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            return method(**kwargs)
        except ClientError as err:
            error = err.response.get("Error") or {}
            code = str(error.get("Code") or "")
            status = (err.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if action == "s3:PutObject" and (code == "PreconditionFailed" or status == 412):
                raise _Taken(in_flight=False) from None
            if action == "s3:PutObject" and (code == "ConditionalRequestConflict" or status == 409):
                raise _Taken(in_flight=True) from None
            raise self._error(action, key, code, status, error.get("Message")) from err
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise FamulorValidationError(
                "ledger_conn_id",
                f"no AWS credentials for the campaign ledger in s3://{self.bucket} ({err}): give the "
                f"connection {self.conn_id!r} keys or a role, or give the worker an identity (IRSA, "
                "pod identity, an instance profile).",
            ) from err
        except BotoCoreError as err:  # no connection, a timeout ... after botocore's own retries
            raise FamulorError(
                f"Cannot reach the campaign ledger in s3://{self.bucket} ({type(err).__name__}: {err})"
            ) from err

    def _error(self, action: str, key: str, code: str, status: Any, message: Any) -> FamulorError:
        where = f"s3://{self.bucket}/{key}"
        if code in _NO_BUCKET:
            return FamulorValidationError(
                "ledger_path",
                f"the bucket {self.bucket!r} does not exist (or not where the connection "
                f"{self.conn_id!r} looks: region, endpoint_url). Create it, or point ledger_path at an "
                "existing bucket.",
            )
        if code in _BAD_CREDENTIALS:
            return FamulorValidationError(
                "ledger_conn_id",
                f"S3 refused the credentials of the connection {self.conn_id!r} ({code}) for {where}: "
                "fix its access key and secret (or role).",
            )
        if code in _DENIED or status == 403:
            return FamulorValidationError(
                "ledger_conn_id",
                f"the connection {self.conn_id!r} may not {action} on {where} ({code or status}). Grant "
                f"it {PERMISSIONS} on the ledger's bucket and prefix (no delete or overwrite is "
                "needed).",
            )
        return FamulorError(f"{action} on {where} failed: {code or status} {message or ''}".rstrip())


class _Taken(Exception):
    """A create-only write found its key taken (or being taken: ``in_flight``)."""

    def __init__(self, *, in_flight: bool) -> None:
        super().__init__()
        self.in_flight = in_flight


def s3_client(conn_id: str) -> Any:
    """The boto3 S3 client of an Airflow AWS connection (through the Amazon provider's S3Hook)."""
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    except ImportError as err:
        raise FamulorValidationError(
            "ledger_path",
            "an s3:// ledger needs Airflow's Amazon provider: pip install "
            "'airflow-provider-famulor[amazon]' (apache-airflow-providers-amazon).",
        ) from err
    return S3Hook(aws_conn_id=conn_id).get_conn()

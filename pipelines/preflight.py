"""Storage checks made before a job starts any work, so that a missing credential is one line naming the
location, what is wrong and where credentials are looked up (exit status 2), not a botocore traceback from
the middle of the job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from actors.uri import protocol_of
from pipelines.storage import StorageError

CREDENTIAL_SOURCES = ("the config's storage_options (key, secret, token, profile)",
                      "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)",
                      "AWS_PROFILE and ~/.aws/credentials, ~/.aws/config",
                      "the container or instance role")


def has_s3_credentials(options: Mapping[str, Any]) -> bool:
    """Whether s3fs will find credentials with ``options``: anonymous access, a key and secret given, or
    botocore's credential chain (environment, shared files, container / instance role)."""
    if options.get("anon") or (options.get("key") and options.get("secret")):
        return True
    import botocore.exceptions
    import botocore.session

    try:
        return botocore.session.Session(profile=options.get("profile")).get_credentials() is not None
    except botocore.exceptions.ProfileNotFound:
        return False


def check_credentials(uris: Sequence[str], options: Mapping[str, Any]) -> None:
    """``StorageError`` for the first ``s3://`` location among ``uris`` that ``options`` gives no credentials for."""
    s3_uris = [uri for uri in uris if protocol_of(uri) in ("s3", "s3a")]
    if s3_uris and not has_s3_credentials(options):
        raise StorageError(s3_uris[0], "no S3 credentials found; looked up in " + "; ".join(CREDENTIAL_SOURCES)
                           + " (set one, or storage_options.anon=true for a public bucket)")



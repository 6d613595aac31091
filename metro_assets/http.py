"""HTTP policy: which answers are worth retrying, how long to wait, and the errors we raise.

Kept apart from the transfer engine so other sources (hf, s3 mirrors) share one policy.
"""
from __future__ import annotations

import email.utils
import random
import time
from typing import Optional

from metro_assets.errors import SourceDeadError, SourceError
from metro_assets.settings import Settings

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
NEVER_RETRY_STATUS = frozenset({401, 403, 404, 409, 410})

AZURE_DEAD_SINCE = "2025-02"


def retry_after_seconds(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """Parse Retry-After in either form: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        ts = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, ts - (time.time() if now is None else now))


def backoff_delay(failures: int, settings: Settings, retry_after: Optional[float] = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when longer."""
    cap = min(settings.backoff_max, settings.backoff_base * (2 ** max(0, failures - 1)))
    delay = random.uniform(cap / 2, cap)
    if retry_after is not None:
        # Honour the server, but never wait past our own ceiling.
        delay = max(delay, min(retry_after, settings.backoff_max))
    return delay


def is_azure_public_access_refusal(status: int, body: bytes) -> bool:
    return status == 409 and b"PublicAccessNotPermitted" in body


def status_error(url: str, status: int, body: bytes = b"", reason: str = "") -> SourceError:
    """The error for an HTTP status we will not (or no longer) retry."""
    if is_azure_public_access_refusal(status, body):
        return SourceDeadError(
            f"The Azure blob at {url} refuses anonymous access (HTTP 409 PublicAccessNotPermitted): "
            f"Microsoft's storage account has refused public access since {AZURE_DEAD_SINCE}, so this URL will not come back",
            url=url, status=status, retryable=False,
            did="Did not retry",
            next_command="fetch from a mirror with `metro-assets fetch --mirror BASE ...`, use another source for "
                         "this asset, or bring a local copy with `metro-assets import <local copy>`",
        )
    if status == 410:
        return SourceDeadError(f"{url} is gone (HTTP 410)", url=url, status=status, retryable=False,
                               did="Did not retry",
                               next_command="use `--mirror BASE`, another source, or `metro-assets import <local copy>`")
    what = {
        401: "needs authentication (HTTP 401)",
        403: "refused access (HTTP 403)",
        404: "does not exist (HTTP 404)",
        409: "refused the request (HTTP 409)",
        416: "cannot serve the requested range (HTTP 416)",
    }.get(status, f"answered HTTP {status}" + (f" {reason}" if reason else ""))
    retryable = status in RETRYABLE_STATUS
    return SourceError(f"{url} {what}", url=url, status=status, retryable=retryable,
                       did="Gave up after retries" if retryable else "Did not retry",
                       next_command="check the URL, or use `--mirror BASE` or `metro-assets import <local copy>`")

"""The one place for errors.

Every error carries structured fields and renders as one paragraph: what
happened, what was expected, what we did, and the exact next command.  Each
class also fixes the process exit code the CLI uses for it.
"""
from __future__ import annotations

from typing import Any, Optional

# Exit codes (public contract; see README "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1          # something missing, corrupt or failed
EXIT_USAGE = 2           # usage or manifest error
EXIT_ACTION_REQUIRED = 3  # only manual (license-gated) actions remain


class MetroAssetsError(Exception):
    """Base class.  Subclasses set ``exit_code``."""

    exit_code = EXIT_FAILED

    def __init__(
        self,
        what: str,
        *,
        expected: Optional[str] = None,
        got: Optional[str] = None,
        did: Optional[str] = None,
        next_command: Optional[str] = None,
        **fields: Any,
    ) -> None:
        self.what = what
        self.expected = expected
        self.got = got
        self.did = did
        self.next_command = next_command
        self.fields = fields
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        parts = [self.what.rstrip(".") + "."]
        if self.expected is not None:
            parts.append(f"Expected {self.expected}" + (f", got {self.got}." if self.got is not None else "."))
        elif self.got is not None:
            parts.append(f"Got {self.got}.")
        if self.did:
            parts.append(self.did.rstrip(".") + ".")
        if self.next_command:
            parts.append(f"Next: {self.next_command}")
        return " ".join(parts)

    def to_json(self) -> dict:
        out = {
            "error": type(self).__name__,
            "message": self.paragraph(),
            "what": self.what,
            "expected": self.expected,
            "got": self.got,
            "did": self.did,
            "next_command": self.next_command,
        }
        for k, v in self.fields.items():
            if isinstance(v, (str, int, float, bool, type(None), list, dict)):
                out[k] = v
            else:
                out[k] = str(v)
        return out


class UsageError(MetroAssetsError):
    exit_code = EXIT_USAGE


class ManifestError(MetroAssetsError):
    """A manifest is invalid.  ``file``, ``line`` and ``key_path`` locate it."""

    exit_code = EXIT_USAGE

    def __init__(self, what: str, *, file: str, line: Optional[int], key_path: str, **kw: Any) -> None:
        loc = f"{file}" + (f", line {line}" if line else "") + (f", at {key_path}" if key_path else "")
        kw.setdefault("next_command", f"fix {file}" + (f" line {line}" if line else "") + " and run `metro-assets list` to re-check")
        super().__init__(f"Manifest error in {loc}: {what}", file=file, line=line, key_path=key_path, **kw)


class SelectionError(UsageError):
    """An asset, group or tag name matched nothing."""


class VerificationError(MetroAssetsError):
    """Bytes do not match the asset's identity (size, sha256 or structure)."""


class StructuralError(VerificationError):
    """A file fails the structural check of its kind (0 bytes, HTML, wrong magic...)."""


class SourceError(MetroAssetsError):
    """A source could not deliver the asset.  ``retryable`` says whether trying
    the same URL again may help; ``status`` is the HTTP status when there is one."""

    def __init__(self, what: str, *, url: str = "", status: Optional[int] = None, retryable: bool = False, **kw: Any) -> None:
        self.url = url
        self.status = status
        self.retryable = retryable
        super().__init__(what, url=url, status=status, retryable=retryable, **kw)


class SourceDeadError(SourceError):
    """The source is known or found to be permanently gone (409/410, dead_since)."""


class StalledError(SourceError):
    """The transfer fell below the low-speed limit for too long."""


class ActionRequired(MetroAssetsError):
    """A manual (license-gated) step is needed; not a failure of ours."""

    exit_code = EXIT_ACTION_REQUIRED


class LoadError(MetroAssetsError):
    """A checkpoint or body model cannot be loaded safely."""


class MissingDependency(MetroAssetsError):
    """An optional dependency (torch, smplx...) is not installed."""


class DiskSpaceError(MetroAssetsError):
    """Not enough free space for the planned work."""

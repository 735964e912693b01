"""Keep passwords out of every message, log line, journal and report.

SQLAlchemy and PyMySQL put the connection URL (with its password) into some
error texts, so every text that leaves the program goes through :func:`scrub`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
#: Secrets at least this long are also masked wherever they appear verbatim.
MIN_VERBATIM = 8

# scheme://user:password@host -> scheme://user:***@host, wherever it appears in a text.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)[^@\s'\"]+@")
# key=value forms used by ini files and DSNs.
_KEY_PASSWORD = re.compile(
    r"(?i)(?P<head>\b(?:password|passwd|os_password|os_token|token)\s*[=:]\s*)\S+"
)

_known_secrets: set[str] = set()


def remember_secret(secret: str | None) -> None:
    """Register a secret (a password or token) so :func:`scrub` removes it verbatim."""
    # A short password ("nova" on a devstack) would mangle ordinary words in every message;
    # passwords inside URLs are masked by pattern whatever their length.
    if secret and len(secret) >= MIN_VERBATIM:
        _known_secrets.add(secret)


def remember_url_password(url: str | URL | None) -> None:
    if url is None:
        return
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return
    remember_secret(parsed.password if isinstance(parsed.password, str) else None)


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***``."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return scrub(str(url))
    return parsed.render_as_string(hide_password=True)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Remove every password we know of, and anything shaped like one, from ``text``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)
    text = _KEY_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    for secret in sorted({*_known_secrets, *extra}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text

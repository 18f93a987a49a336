"""Images given as http(s) URLs: recognised, checked and downloaded with bounded size and time.

Rules (used by :func:`ovss.data.io.read_image`, ``Segmenter.predict`` and ``ovss segment``):

* Only a ``str`` starting with ``http://`` or ``https://`` is a URL; a ``Path`` is always a local
  file. Any other ``scheme://`` (``file://``, ``ftp://``, ``s3://``, ...) is refused with one line.
* **Offline mode** (``OVSS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) refuses a URL at once, before any
  network access.
* **Byte limit**: ``$OVSS_URL_MAX_MB`` (default 50 MB). A download whose ``Content-Length`` is above
  it is refused before the body is read; one without is cut off as soon as it passes the limit.
  The pixel limit of files (``max_pixels``) applies to the decoded image as well.
* **Timeout**: ``$OVSS_URL_TIMEOUT`` seconds (default 30) for connecting and for each read.
* Redirects are followed only to other http(s) URLs.
"""

from __future__ import annotations

import http.client
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import IO

from ovss.errors import ConfigError, ImageReadError

DEFAULT_URL_MAX_MB = 50.0
DEFAULT_URL_TIMEOUT_S = 30.0
URL_MAX_MB_ENV = "OVSS_URL_MAX_MB"
URL_TIMEOUT_ENV = "OVSS_URL_TIMEOUT"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 1 << 16


def url_scheme(text: object) -> str | None:
    """The lower-cased scheme of ``text`` when it is a ``str`` shaped like ``scheme://...``, else None."""
    if not isinstance(text, str):
        return None
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def is_url(text: object) -> bool:
    """True when ``text`` is a ``str`` http(s) URL."""
    return url_scheme(text) in ("http", "https")


def check_url(url: str) -> None:
    """Raise :class:`ImageReadError` (one line) unless ``url`` is an http(s) URL that may be fetched now."""
    scheme = url_scheme(url)
    if scheme not in ("http", "https"):
        raise ImageReadError(
            f"{url}: {scheme}:// URLs are not supported; pass an http(s) URL or a local file path"
        )
    if not urllib.parse.urlsplit(url).hostname:
        raise ImageReadError(f"{url}: the URL names no host; pass a URL such as https://example.com/cat.jpg")
    if _offline():
        raise ImageReadError(
            f"{url}: offline mode is on (OVSS_OFFLINE / HF_HUB_OFFLINE), so URLs are not downloaded; "
            "download the image yourself and pass the file, or unset offline mode"
        )


def url_stem(url: str) -> str:
    """A file-name stem for the image at ``url``: its last path segment without the extension
    (``https://x.org/a/cat.jpg?s=1`` -> ``cat``), made safe as a file name; ``image`` when empty."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    last = re.split(r"[/\\]", path)[-1]
    stem = last.rsplit(".", 1)[0] if "." in last.strip(".") else last
    stem = re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|]", "_", stem).strip(" .")
    return stem[:120] or "image"


def url_limits() -> tuple[int, float]:
    """(byte limit, timeout in seconds) from ``$OVSS_URL_MAX_MB`` and ``$OVSS_URL_TIMEOUT``.

    Raises:
        ConfigError: a value that is not a finite positive number.
    """
    max_mb = _positive_env(URL_MAX_MB_ENV, DEFAULT_URL_MAX_MB, "a size in MB such as 50")
    timeout = _positive_env(URL_TIMEOUT_ENV, DEFAULT_URL_TIMEOUT_S, "a number of seconds such as 30")
    return int(max_mb * 1_000_000), timeout


def fetch(url: str) -> bytes:
    """Download ``url`` (after :func:`check_url`) within the byte limit and timeout of :func:`url_limits`.

    Raises:
        ImageReadError: refused URL, HTTP error, network failure, timeout, or a body over the limit.
    """
    check_url(url)
    max_bytes, timeout = url_limits()
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    quoted = urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")  # non-ASCII and spaces as %XX
    try:
        request = urllib.request.Request(
            quoted, headers={"User-Agent": "ovss", "Accept": "image/*,*/*;q=0.5"}
        )
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.strip().isdigit() and int(declared) > max_bytes:
                raise _too_large(url, int(declared), max_bytes)
            data = bytearray()
            while block := response.read(_CHUNK):
                data += block
                if len(data) > max_bytes:
                    raise _too_large(url, None, max_bytes)
            if declared and declared.strip().isdigit() and len(data) < int(declared):
                raise ImageReadError(
                    f"cannot download {url}: the connection ended after {len(data)} of {int(declared)} "
                    "bytes; retry"
                )
    except urllib.error.HTTPError as exc:
        raise ImageReadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the URL") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise _timed_out(url, timeout) from None
        why = getattr(reason, "strerror", None) or reason
        raise ImageReadError(f"cannot download {url}: {why}") from None
    except TimeoutError:
        raise _timed_out(url, timeout) from None
    except OSError as exc:  # connection reset, ...
        raise ImageReadError(f"cannot download {url}: {exc.strerror or exc}") from None
    except (http.client.HTTPException, ValueError) as exc:  # a cut body, a malformed URL or answer
        raise ImageReadError(f"cannot download {url}: {type(exc).__name__} {exc}".rstrip()) from None
    if not data:
        raise ImageReadError(f"cannot read {url}: the server sent an empty body; check the URL")
    return bytes(data)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib alone would also follow ftp://)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if url_scheme(newurl) not in ("http", "https"):
            raise ImageReadError(f"{req.full_url} redirects to {newurl}: not an http(s) URL, refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _offline() -> bool:
    from ovss.home import is_offline  # the one definition of offline mode

    return is_offline()


def _positive_env(name: str, default: float, example: str) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={text!r} is not a positive number; set it to {example}")
    return value


def _too_large(url: str, size: int | None, limit: int) -> ImageReadError:
    what = f"is {size / 1e6:.1f} MB" if size is not None else "is larger than the limit"
    return ImageReadError(
        f"{url} {what}; URLs are downloaded up to {limit / 1e6:g} MB: raise {URL_MAX_MB_ENV} or download "
        "the image yourself and pass the file"
    )


def _timed_out(url: str, timeout: float) -> ImageReadError:
    return ImageReadError(
        f"cannot download {url}: no answer within {timeout:g} s; retry, raise {URL_TIMEOUT_ENV}, or download "
        "the image yourself and pass the file"
    )

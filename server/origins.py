"""Web origins (`scheme://host[:port]`): a page's Origin header, and the
entries of ALLOWED_ORIGINS, which may say `:*` for any port or `*` for every
page. The settings (server/config.py) check ALLOWED_ORIGINS with the same
function the bridge (server/bridge/auth.py) reads it with, so what passes at
start is what the bridge allows."""

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

ANY = "*"  # every page
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SHAPE = re.compile(r"[a-z][a-z0-9+.\-]*://(\[[0-9a-f:.]+\]|[a-z0-9\-._~%]+)(:(\d{1,5}|\*))?", re.IGNORECASE)


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int | None  # None: any port (a pattern's `:*`)


def parse_origin(text: str, *, pattern: bool = False) -> Origin | None:
    """The origin `text` names, None when it names none; a `pattern` may end
    in `:*`."""
    text = text.strip().lower()
    any_port = pattern and text.endswith(":*")
    if any_port:
        text = text[:-2]
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path or parts.query or parts.fragment or parts.username:
        return None
    if any_port:
        if parts.port is not None:
            return None
        return Origin(parts.scheme, parts.hostname, None)
    return Origin(parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS.get(parts.scheme))


def allowed_origin(entry: str) -> Origin | None:
    """One ALLOWED_ORIGINS entry; None for `*`. ValueError names a malformed one."""
    if entry == ANY:
        return None
    origin = parse_origin(entry, pattern=True) if _SHAPE.fullmatch(entry) else None
    if origin is None:
        raise ValueError(f"{entry!r} is not an origin (scheme://host[:port], a port of * for any, or *)")
    return origin

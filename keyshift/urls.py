"""Redis URLs: redaction for logs, topics and errors, and validation of settings.

:func:`redact` is the only form in which a URL leaves the process (logs, published
state locations, error messages), so it hides every secret a URL can carry: the
password in the user info and the value of every secret query parameter.

:func:`validate_redis_url` checks what redis-py checks only at the first command or
never: a host or socket path is given, the database is an integer, and every query
parameter is one redis-py passes somewhere that takes it. redis-py hands an unknown
query parameter to the connection class, which raises ``TypeError`` on the first
connection, mid-stream.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import cast
from urllib.parse import SplitResult, parse_qsl, unquote, unquote_plus, urlsplit

from redis.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)

from keyshift.errors import ConfigError

__all__ = [
    "REDIS_SCHEMES",
    "is_secret_parameter",
    "known_query_parameters",
    "redact",
    "validate_redis_url",
]

#: URL schemes redis-py opens, each with the connection class it uses.
REDIS_SCHEMES: dict[str, type] = {
    "redis": Connection,
    "rediss": SSLConnection,
    "unix": UnixDomainSocketConnection,
}

#: A query parameter whose lower-cased name contains one of these holds a secret.
_SECRET_PARTS = ("pass", "secret", "token", "credential")


def is_secret_parameter(name: str) -> bool:
    """Whether a query parameter's value is a secret (``password``, ``ssl_password``,
    ``auth_token``, ...): its lower-cased name contains ``pass``, ``secret``,
    ``token`` or ``credential``. ``user``/``username`` are not secrets."""
    lowered = name.lower()
    return lowered == "ssl_keyfile_password" or any(part in lowered for part in _SECRET_PARTS)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else ""


def _misplaced_at(url: str) -> bool:
    """An ``@`` after the user info: either part of an unencoded ``/``, ``?`` or ``#``
    in the password cut the user info short, or an ``@`` elsewhere is not encoded.
    Either way the text before the ``@`` may hold a password."""
    rest = url.split("://", 1)[1] if "://" in url else url
    netloc = urlsplit(url).netloc
    return rest.count("@") > netloc.count("@")


def _redact_query(query: str) -> str:
    """Each ``name=value`` with a secret name gets ``***`` for its value; the rest,
    separators and percent-encoding included, stays as written."""
    fields = []
    for field in query.split("&"):
        name, sep, _ = field.partition("=")
        secret = sep and is_secret_parameter(unquote_plus(name))
        fields.append(f"{name}=***" if secret else field)
    return "&".join(fields)


def redact(url: str) -> str:
    """The URL without its secrets, for logs, published locations and errors.

    The password in the user info becomes ``***`` (``redis://user:***@host/0``;
    ``***`` also stands in when only a user is given, so the form does not tell
    whether a password was set), as does the value of every secret query parameter
    (see :func:`is_secret_parameter`). Everything else stays as written, so equal
    URLs redact equally and the result identifies the server. An ``@`` after the
    user info hides all before it (``redis://***@<rest>``): an unencoded ``/``, ``?``
    or ``#`` in a password ends the user info early for a URL parser, and the
    password would otherwise show. A URL that does not parse shows only its scheme.
    """
    if "://" not in url:
        # No authority: hide all up to an '@' (``user:password@host``), and secret
        # query values.
        if "@" in url:
            return "***@" + redact(url.rpartition("@")[2])
        base, sep, query = url.partition("?")
        return base + sep + _redact_query(query) if sep else base
    scheme = _scheme(url)
    try:
        if _misplaced_at(url):
            tail = url.rpartition("@")[2]
            return redact(f"{scheme}://{tail}").replace("://", "://***@", 1)
        parts = urlsplit(url)
    except ValueError:
        return f"{scheme}://***"
    netloc = parts.netloc
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        user = creds.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if user else f"***@{host}"
    out = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        out += "?" + _redact_query(parts.query)
    return out + (f"#{parts.fragment}" if parts.fragment else "")


def _init_parameters(cls: type) -> set[str]:
    """Keyword arguments ``cls(...)`` takes: its ``__init__``'s, and those of each
    ``__init__`` up the MRO that the one below passes ``**kwargs`` on to."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names.update(
            p.name
            for p in params
            if p.name != "self"
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


def known_query_parameters(scheme: str) -> frozenset[str]:
    """Query parameters a ``<scheme>://`` URL may carry.

    redis-py's ``parse_url`` passes every query parameter, typed by
    ``URL_QUERY_ARGUMENT_PARSERS`` where it has a parser, to the connection pool,
    which passes those it does not take itself to the scheme's connection class.
    So the known ones are the pool's arguments (but ``connection_class``, which the
    scheme sets) and the connection class's. A parser key neither takes is refused:
    ``timeout`` belongs to ``BlockingConnectionPool`` alone, and ``ssl_*`` to
    ``rediss://`` alone.
    """
    pool = _init_parameters(ConnectionPool) - {"connection_class"}
    return frozenset(pool | _init_parameters(REDIS_SCHEMES[scheme]))


_KNOWN = {scheme: known_query_parameters(scheme) for scheme in REDIS_SCHEMES}


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def validate_redis_url(setting: str, url: str) -> None:
    """Raise :class:`~keyshift.errors.ConfigError` naming ``setting`` unless ``url``
    is a Redis URL redis-py opens as written.

    Rules: the scheme is ``redis://``, ``rediss://`` or ``unix://``; ``@`` appears
    only to end the user info (percent-encode ``@ / ? #`` in a password, ``@``
    elsewhere); ``redis(s)://`` names a host, a valid port if any, and a database
    path that is an integer (redis-py silently uses db 0 for any other path);
    ``unix://`` names a socket path; every query parameter is one of
    :func:`known_query_parameters` and a typed one parses. Messages show the URL
    only redacted, and never a query parameter's value.
    """
    shown = redact(url)
    try:
        _check_redis_url(url)
    except _Invalid as exc:
        raise ConfigError(setting, f"{shown!r}: {exc}") from None


class _Invalid(ValueError):
    """What is wrong with a Redis URL (without its secrets)."""


def _check_redis_url(url: str) -> None:
    scheme = _scheme(url)
    if scheme not in REDIS_SCHEMES:
        raise _Invalid("expected a redis://, rediss:// or unix:// URL")
    try:
        if _misplaced_at(url):
            raise _Invalid(
                "'@' outside the user info; percent-encode '@', '/', '?' and '#' "
                "in a password (%40, %2F, %3F, %23) and '@' anywhere else"
            )
        parts = urlsplit(url)
    except _Invalid:
        raise
    except ValueError:
        raise _Invalid("not a parsable URL") from None
    if scheme == "unix":
        if not unquote(parts.path).strip("/"):
            raise _Invalid("unix:// needs a socket path (unix:///path/to/redis.sock)")
    else:
        _check_network_location(scheme, parts)
    _check_query(scheme, parts.query)


def _check_network_location(scheme: str, parts: SplitResult) -> None:
    if not parts.hostname:
        raise _Invalid(f"{scheme}:// needs a host ({scheme}://host:6379/0)")
    try:
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise _Invalid("the port is not a number in 0-65535") from None
    db = unquote(parts.path).replace("/", "")
    if db and not (db.isascii() and db.isdigit()):
        raise _Invalid("the path must be a database number (/0) or empty")


def _check_query(scheme: str, query: str) -> None:
    known = _KNOWN[scheme]
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in known:
            raise _Invalid(
                f"unknown query parameter {name!r}; {scheme}:// URLs take {_names(known)}"
            )
        parser = cast("Callable[[str], object] | None", URL_QUERY_ARGUMENT_PARSERS.get(name))
        if parser is not None and value:
            try:
                parser(value)
            except (TypeError, ValueError):
                raise _Invalid(f"query parameter {name!r} has an invalid value") from None

"""Who may call what: a bearer token for every endpoint that changes state (and, with `--protect all`, for the
reads too), a read-only mode, and the refusal to expose an unprotected server to the network.

The token is read from a file (`--token-file`) or the environment (`MAHN_SERVE_TOKEN`), never from the command
line, where `ps` shows it to every user of the machine. It is compared in constant time. A request without a
token gets 401 (with `WWW-Authenticate: Bearer`), one with a wrong token 403; neither reaches the endpoint, so
nothing is written.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mahn.errors import DataError

TOKEN_ENV = "MAHN_SERVE_TOKEN"
MIN_TOKEN = 16  # characters: a shorter secret can be guessed
Protect = Literal["writes", "all"]

bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="The server's token (`mahn serve --token-file PATH` or $MAHN_SERVE_TOKEN).")


@dataclass(frozen=True)
class Access:
    token: str | None = None  # None: no token (allowed on a loopback address only)
    protect: Protect = "writes"
    read_only: bool = False

    def __post_init__(self):
        if self.protect not in ("writes", "all"):
            raise DataError(f"must be writes or all, got {self.protect!r}", "--protect")
        if self.protect == "all" and self.token is None:
            raise DataError("--protect all needs a token (--token-file PATH or $MAHN_SERVE_TOKEN)", "--protect")


def read_token(token_file: Path | None) -> str | None:
    """The token from `token_file`, else from $MAHN_SERVE_TOKEN, else None. Surrounding whitespace (the file's
    final newline) is not part of it."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"cannot read the token: {error.__class__.__name__}", token_file) from error
        where = str(token_file)
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        where = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise DataError(f"the token must be at least {MIN_TOKEN} printable characters without spaces "
                        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)", where)
    return token


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1, a name resolving only to them)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_exposure(host: str, access: Access) -> None:
    """Refuse to serve writes without a token on an address other machines can reach."""
    if access.token is None and not access.read_only and not is_loopback(host):
        raise DataError(f"{host} is reachable from other machines and anyone could add items: give a token "
                        f"(--token-file PATH or ${TOKEN_ENV}) or serve with --read-only", "--host")


def _check(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    expected = request.app.state.access.token
    if expected is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "this endpoint needs the server's token: Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(403, "wrong token")


async def may_write(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """The dependency of every endpoint that changes state."""
    if request.app.state.access.read_only:
        raise HTTPException(403, "this server is read-only (mahn serve --read-only)")
    _check(request, credentials)


async def may_read(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """The dependency of every read under `--protect all`."""
    _check(request, credentials)

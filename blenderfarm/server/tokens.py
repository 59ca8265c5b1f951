"""API and node tokens: created once, shown once, stored only as SHA-256 hashes.

Kept in the ``tokens`` table of ``farm.db`` (part of the store's schema and its
migrations) so that ``bf-server token ...`` can manage them from a shell while the
server runs; the server re-reads the table every few seconds (:class:`TokenCache`),
so a revocation takes effect within that time without a restart.

A user token has a role: ``user`` (controls the jobs it submitted) or ``admin``
(controls every job, the nodes and, through the API, the tokens).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .store import prepare

KINDS = ("user", "node")
ROLES = ("user", "admin")
PREFIX = {"user": "bfu_", "node": "bfn_"}


@dataclass(frozen=True)
class TokenInfo:
    id: str
    kind: str
    name: str
    created: float
    revoked: float | None = None
    role: str = "user"  # of a user token: "user" or "admin"

    @property
    def admin(self) -> bool:
        return self.kind == "user" and self.role == "admin"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _connect(db_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(db_path, timeout=10)
    prepare(db, db_path)
    return db


def create(db_path: Path, kind: str, name: str, role: str = "user") -> tuple[TokenInfo, str]:
    """Make a token; return its record and the secret, which is never stored."""
    if kind not in KINDS:
        raise ValueError(f"token kind must be one of {', '.join(KINDS)}")
    if role not in ROLES or (kind == "node" and role != "user"):
        raise ValueError("a role is user or admin, and only a user token has one")
    secret = PREFIX[kind] + secrets.token_urlsafe(32)
    info = TokenInfo(id=secrets.token_hex(4), kind=kind, name=name, created=time.time(),
                     role=role)
    with _connect(db_path) as db:
        db.execute("INSERT INTO tokens (id, kind, name, hash, created, role) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (info.id, kind, name, token_hash(secret), info.created, role))
    return info, secret


def list_tokens(db_path: Path) -> list[TokenInfo]:
    with _connect(db_path) as db:
        rows = db.execute("SELECT id, kind, name, created, revoked, role FROM tokens "
                          "ORDER BY created")
        return [TokenInfo(*row) for row in rows]


def revoke(db_path: Path, token_id: str) -> bool:
    with _connect(db_path) as db:
        cur = db.execute("UPDATE tokens SET revoked=? WHERE id=? AND revoked IS NULL",
                         (time.time(), token_id))
        return cur.rowcount > 0


class TokenCache:
    """The server's view of the tokens table, refreshed at most every ``ttl`` seconds."""

    def __init__(self, db_path: Path, ttl: float = 2.0) -> None:
        self.db_path = db_path
        self.ttl = ttl
        self._by_hash: dict[str, TokenInfo] = {}
        self._loaded = 0.0

    def refresh(self) -> None:
        """Blocking: call from a thread. Every couple of seconds, so a plain read: the
        server's store brought the schema up to date when it opened."""
        db = sqlite3.connect(self.db_path, timeout=10)
        try:
            rows = db.execute("SELECT hash, id, kind, name, created, revoked, role "
                              "FROM tokens").fetchall()
        finally:
            db.close()
        self._by_hash = {h: TokenInfo(*rest) for h, *rest in rows}
        self._loaded = time.monotonic()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._loaded > self.ttl

    @property
    def required(self) -> bool:
        """Tokens are required as soon as one valid token exists."""
        return any(t.revoked is None for t in self._by_hash.values())

    def valid_id(self, token_id: str) -> bool:
        return any(t.id == token_id and t.revoked is None for t in self._by_hash.values())

    def lookup(self, secret: str | None) -> TokenInfo | None:
        if not secret:
            return None
        info = self._by_hash.get(token_hash(secret))
        if info is None or info.revoked is not None:
            return None
        return info

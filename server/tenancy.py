"""Tenant isolation of the prefix cache.

A block is shared only between requests with the same salt (it seeds the block hash
chain, see `cache.block_hash.root_hash`). With `--isolate-tenants none` the salt is the
client's own `cache_salt` (usually none: every client shares every block, so a client
that guesses another's prompt sees it as `cached_tokens` and a faster first token).
With `--isolate-tenants api-key` the salt is derived from the request's bearer key, so
no block is ever shared across keys, combined with the client's `cache_salt` if any.
"""

from __future__ import annotations

from hashlib import blake2b

from server.config import TenantIsolation

_PERSON = b"tierkv-tenant"  # blake2b personalisation: these digests mean nothing else


def tenant_key_digest(token: bytes | None, secret: bytes = b"") -> str:
    """A one-way digest of a bearer key (requests without one share the empty key).

    Only this digest, hashed again into the block hash root, leaves the request: the key
    itself is never stored or logged. With a server-side `secret` (keyed BLAKE2b), someone
    who reads block hashes out of Redis or LMDB cannot test guesses of weak keys offline.
    """
    key = blake2b(secret, digest_size=32, person=_PERSON).digest() if secret else b""
    return blake2b(token or b"", digest_size=16, key=key, person=_PERSON).hexdigest()


def cache_salt_for(
    isolation: TenantIsolation,
    token: bytes | None,
    client_salt: str | None,
    secret: bytes = b"",
) -> str | None:
    """The salt that seeds a request's block hashes under `isolation`."""
    if isolation is TenantIsolation.NONE:
        return client_salt
    tenant = f"key:{tenant_key_digest(token, secret)}"  # fixed length: unambiguous join
    return tenant if client_salt is None else f"{tenant}/{client_salt}"

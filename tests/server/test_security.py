"""API keys (`--api-key`) and tenant isolation of the prefix cache (`--isolate-tenants`)."""

from __future__ import annotations

import pytest

from server.config import Settings, TenantIsolation
from server.tenancy import cache_salt_for, tenant_key_digest
from tests.server.live import LiveServer, run_server
from tests.server.test_errors import assert_error

CMPL = "/v1/completions"
# A "secret" prompt of several 16-token blocks that another tenant tries to guess.
SECRET = "Patient 4711: diagnosis and treatment plan, strictly confidential. " * 3


def _complete(server: LiveServer, key: str | None, **extra) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = {"model": "tiny-llama", "prompt": SECRET, "max_tokens": 2, "temperature": 0, **extra}
    r = server.client.post(CMPL, json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _cached(response: dict) -> int:
    return response["usage"]["prompt_tokens_details"]["cached_tokens"]


# -- API keys ----------------------------------------------------------------------------


@pytest.fixture
def keyed(make_settings):
    with run_server(make_settings(api_key="alice-key, bob-key")) as live:
        yield live


def test_missing_or_wrong_key_is_401(keyed: LiveServer):
    body = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}
    missing = keyed.client.post(CMPL, json=body)
    assert assert_error(missing, 401)["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = keyed.client.post(CMPL, json=body, headers={"Authorization": "Bearer mallory"})
    error = assert_error(wrong, 401)
    assert "mallory" not in error["message"]  # a key is never echoed back
    basic = keyed.client.post(CMPL, json=body, headers={"Authorization": "Basic alice-key"})
    assert_error(basic, 401)
    for path in ("/v1/models", "/cache/stats"):
        assert_error(keyed.client.get(path), 401)
    assert keyed.metric("tierkv:request_rejected_total", reason="unauthorized") == 5


def test_each_listed_key_is_accepted(keyed: LiveServer):
    for key in ("alice-key", "bob-key"):
        _complete(keyed, key)
        r = keyed.client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200


def test_health_and_metrics_stay_open(keyed: LiveServer):
    assert keyed.client.get("/health").status_code == 200
    assert keyed.client.get("/metrics").status_code == 200


def test_no_api_key_means_no_authentication(server: LiveServer):
    _complete(server, None)
    _complete(server, "anything")


def test_empty_api_key_setting_is_rejected():
    with pytest.raises(ValueError, match="api_key"):
        Settings(api_key=" , ")


# -- tenant isolation -------------------------------------------------------------------


def test_guessed_prompt_hits_across_keys_without_isolation(make_settings):
    """The default (documented): one cache for everyone, so a guess shows as a hit."""
    with run_server(make_settings(api_key="alice-key,bob-key")) as server:
        assert _cached(_complete(server, "alice-key")) == 0
        assert _cached(_complete(server, "bob-key")) > 0  # bob learns alice's prompt


def test_guessed_prompt_misses_across_keys_with_isolation(make_settings):
    settings = make_settings(api_key="alice-key,bob-key", isolate_tenants="api-key")
    with run_server(settings) as server:
        assert _cached(_complete(server, "alice-key")) == 0
        assert _cached(_complete(server, "bob-key")) == 0  # the guess is invisible
        assert _cached(_complete(server, "alice-key")) > 0  # alice still shares with herself
        # A client cache_salt splits a key's cache further.
        assert _cached(_complete(server, "alice-key", cache_salt="s1")) == 0
        assert _cached(_complete(server, "alice-key", cache_salt="s1")) > 0


def test_isolation_without_api_keys_isolates_by_bearer(make_settings):
    # Without --api-key every bearer string is a tenant; requests without one share one.
    with run_server(make_settings(isolate_tenants="api-key")) as server:
        assert _cached(_complete(server, "t1")) == 0
        assert _cached(_complete(server, "t2")) == 0
        assert _cached(_complete(server, None)) == 0
        assert _cached(_complete(server, None)) > 0


def test_salt_derivation():
    none, iso = TenantIsolation.NONE, TenantIsolation.API_KEY
    assert cache_salt_for(none, b"k", None) is None
    assert cache_salt_for(none, b"k", "s") == "s"
    a, b = cache_salt_for(iso, b"a", None), cache_salt_for(iso, b"b", None)
    assert a != b
    assert a == f"key:{tenant_key_digest(b'a')}" and len(a) == 4 + 32  # only a digest
    assert cache_salt_for(iso, b"a", "s") == f"{a}/s"
    # A client salt can never forge another key's namespace.
    assert cache_salt_for(iso, b"a", None) != cache_salt_for(iso, b"b", a)
    assert tenant_key_digest(None) == tenant_key_digest(b"")
    # A server-side secret changes every digest, so hashes cannot be checked offline.
    assert tenant_key_digest(b"a", b"s1") != tenant_key_digest(b"a")
    assert tenant_key_digest(b"a", b"s1") != tenant_key_digest(b"a", b"s2")
    assert cache_salt_for(iso, b"a", None, b"s1") == f"key:{tenant_key_digest(b'a', b's1')}"


def test_tenant_secret_keeps_isolation_and_sharing(make_settings):
    settings = make_settings(
        api_key="alice-key,bob-key", isolate_tenants="api-key", tenant_secret="server-side"
    )
    with run_server(settings) as server:
        assert _cached(_complete(server, "alice-key")) == 0
        assert _cached(_complete(server, "bob-key")) == 0
        assert _cached(_complete(server, "alice-key")) > 0

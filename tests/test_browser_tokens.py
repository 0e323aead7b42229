"""Browser tokens: signing and verification, with the clock passed in."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from sluicegate.browser_tokens import (
    BrowserPrincipal,
    derive_secret,
    is_browser_token,
    sign_token,
    verify_token,
)
from sluicegate.errors import AuthenticationFailed

SECRET = b"s" * 32
NOW = 1_800_000_000
ANN = BrowserPrincipal("acme", "ann", ("chat", "insights"), NOW + 900)


def b64(data: bytes) -> str:
    """Base64url without padding, as tokens use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip() -> None:
    """A token verifies to the principal it was signed for."""
    token = sign_token(SECRET, ANN)
    assert token.startswith("sgb_") and is_browser_token(token)
    assert token.count(".") == 1 and len(token) < 200
    assert verify_token(SECRET, token, NOW) == ANN


def test_payload_is_compact_and_readable() -> None:
    """The payload holds org, user, features and expiry under one-letter keys."""
    payload = sign_token(SECRET, ANN)[4:].split(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims == {"o": "acme", "u": "ann", "f": ["chat", "insights"], "e": NOW + 900}


def test_expiry_uses_the_given_clock() -> None:
    """Valid until the second before expires_at, expired from then on."""
    token = sign_token(SECRET, ANN)
    assert verify_token(SECRET, token, NOW + 899.9).user == "ann"
    for later in (NOW + 900, NOW + 10_000):
        with pytest.raises(AuthenticationFailed, match="expired") as caught:
            verify_token(SECRET, token, later)
        assert caught.value.code == "browser_token_expired"


def test_wrong_secret_is_rejected() -> None:
    """A token signed with another secret fails, with a message that says so."""
    token = sign_token(b"another secret", ANN)
    with pytest.raises(AuthenticationFailed, match="signature does not match") as caught:
        verify_token(SECRET, token, NOW)
    assert caught.value.code == "invalid_browser_token" and caught.value.status_code == 401


def test_tampered_payload_is_rejected() -> None:
    """Changing the user (or anything) in the payload breaks the signature."""
    token = sign_token(SECRET, ANN)
    signature = token.split(".")[1]
    forged = json.dumps({"o": "acme", "u": "bob", "f": ["chat", "insights"], "e": NOW + 900})
    with pytest.raises(AuthenticationFailed, match="signature"):
        verify_token(SECRET, f"sgb_{b64(forged.encode())}.{signature}", NOW)


def test_extended_expiry_is_rejected() -> None:
    """A token cannot be kept alive by editing its expiry."""
    token = sign_token(SECRET, ANN)
    longer = sign_token(SECRET, BrowserPrincipal("acme", "ann", ("chat", "insights"), NOW + 99_999))
    spliced = longer.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(AuthenticationFailed):
        verify_token(SECRET, spliced, NOW)


@pytest.mark.parametrize(
    "token",
    [
        "sk-sg-abc",
        "sgb_",
        "sgb_nodot",
        "sgb_abc.",
        "sgb_.abc",
        "sgb_abc.***",
        "sgb_" + "a" * 5000 + ".b",
    ],
)
def test_malformed_tokens_are_rejected(token: str) -> None:
    """Anything that is not prefix, payload, dot and signature is a 401."""
    with pytest.raises(AuthenticationFailed, match="invalid"):
        verify_token(SECRET, token, NOW)


def test_signature_must_be_canonical() -> None:
    """Stray characters or padding in the signature do not make another valid token."""
    token = sign_token(SECRET, ANN)
    payload, signature = token.split(".")
    for variant in (signature + "=", signature[:10] + "!" + signature[10:], signature + "AA"):
        with pytest.raises(AuthenticationFailed):
            verify_token(SECRET, f"{payload}.{variant}", NOW)


def test_well_signed_garbage_payload_is_rejected() -> None:
    """A payload that is signed but not the expected claims is still refused."""
    for claims in (b"[1, 2]", b'{"o": "acme"}', b'{"o": "a", "u": "b", "f": "chat", "e": 1}', b"not json"):
        payload = b64(claims)
        signature = b64(hmac.new(SECRET, b"sgb_" + payload.encode(), hashlib.sha256).digest())
        with pytest.raises(AuthenticationFailed, match="payload is malformed"):
            verify_token(SECRET, f"sgb_{payload}.{signature}", NOW)


def test_derived_secret_depends_on_the_pepper() -> None:
    """The default secret is a 32-byte HMAC of the pepper, different for each pepper."""
    assert derive_secret(b"a") == derive_secret(b"a")
    assert derive_secret(b"a") != derive_secret(b"b")
    assert len(derive_secret(b"a")) == 32 and derive_secret(b"a") != b"a"


def test_principal_allows_only_its_features() -> None:
    """allows() checks the list, and to_dict() is what the mint route answers."""
    assert ANN.allows("chat") and not ANN.allows("okr-template")
    assert ANN.to_dict() == {
        "org": "acme",
        "user": "ann",
        "features": ["chat", "insights"],
        "expires_at": NOW + 900,
        "key_id": None,  # minted without a key: local development
    }

"""JWT bearer validation per route (PyJWT), and minting development tokens.

A route with ``auth`` accepts a request only with ``Authorization: Bearer <jwt>`` whose
signature verifies with the route's key (the algorithm is fixed by the route, never taken from
the token), that has not expired, whose ``exp`` (and ``iat``/``nbf``) are JSON numbers and whose
``exp`` is at most ``max_lifetime`` past ``iat`` and now, that matches ``audience``/``issuer``
when configured (401 otherwise), and carries every scope the route requires in its ``scope``
claim (403 otherwise).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jwt

from shoal._errors import ConfigurationError, ShoalError
from shoal.platform.spec import RouteAuth

#: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``.
LEEWAY = 5.0


class AuthError(ShoalError):
    """A request fails a route's auth: ``status`` 401 or 403, with the ``WWW-Authenticate``
    challenge (RFC 6750) to send."""

    def __init__(self, status: int, detail: str, challenge: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.challenge = challenge


def _challenge(error: str | None = None, scope: str | None = None) -> str:
    parts = ['Bearer realm="shoal"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts)


class TokenVerifier:
    """Verifies bearer tokens for one route's :class:`RouteAuth`.

    Keys are loaded once, at construction: raises :class:`ConfigurationError` naming the
    setting when the secret's variable is unset or a key file cannot be read or parsed.
    Relative key paths are resolved against ``base_dir``.
    """

    def __init__(self, auth: RouteAuth, *, base_dir: Path | None = None) -> None:
        self.algorithm = auth.algorithm
        self.audience = auth.audience
        self.issuer = auth.issuer
        self.scopes = tuple(auth.scopes)
        self.max_lifetime = auth.max_lifetime
        self._required_scope = " ".join(auth.scopes)
        self._key: Any = None
        self._jwks: dict[str, Any] = {}
        if auth.algorithm == "HS256":
            if not auth.secret_env:
                raise ConfigurationError("auth.secret_env", "HS256 needs the secret's variable")
            secret = os.environ.get(auth.secret_env)
            if not secret:
                raise ConfigurationError(auth.secret_env, "is not set (the route's HS256 secret)")
            self._key = secret
        elif auth.public_key_file:
            pem = _read(auth.public_key_file, base_dir, "auth.public_key_file")
            try:
                self._key = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256) \
                    .prepare_key(pem)
            except (ValueError, jwt.InvalidKeyError) as exc:
                raise ConfigurationError("auth.public_key_file", f"not an RSA key: {exc}") \
                    from exc
        elif auth.jwks_file:
            text = _read(auth.jwks_file, base_dir, "auth.jwks_file")
            try:
                keyset = jwt.PyJWKSet.from_dict(json.loads(text))
            except (ValueError, jwt.PyJWKSetError) as exc:
                raise ConfigurationError("auth.jwks_file", f"not a JWKS: {exc}") from exc
            self._jwks = {k.key_id or "": k.key for k in keyset.keys}
        else:
            raise ConfigurationError("auth", "RS256 needs public_key_file or jwks_file")

    def _key_for(self, token: str) -> Any:
        if not self._jwks:
            return self._key
        try:
            kid = jwt.get_unverified_header(token).get("kid") or ""
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, "The bearer token is malformed.",
                            _challenge("invalid_token")) from exc
        key = self._jwks.get(kid)
        if key is None and len(self._jwks) == 1 and not kid:
            key = next(iter(self._jwks.values()))
        if key is None:
            raise AuthError(401, "The bearer token's key is unknown.", _challenge("invalid_token"))
        return key

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims, or :class:`AuthError` (401 without a valid token, 403 when a
        required scope is missing)."""
        if not authorization:
            raise AuthError(401, "This route needs a bearer token.", _challenge())
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "Expected 'Authorization: Bearer <token>'.",
                            _challenge("invalid_request"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key_for(token),
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(401, "The bearer token has expired.",
                            _challenge("invalid_token")) from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, f"The bearer token is invalid: {exc}.",
                            _challenge("invalid_token")) from exc
        self._check_times(claims)
        if self.scopes:
            granted = _scopes_of(claims)
            missing = [s for s in self.scopes if s not in granted]
            if missing:
                raise AuthError(403, "The token lacks the scope(s): " + " ".join(missing) + ".",
                                _challenge("insufficient_scope", self._required_scope))
        return claims


    def _check_times(self, claims: dict[str, Any]) -> None:
        """PyJWT takes ``"exp": "99999999999"`` (a string) for a number, and any ``exp`` at
        all: a token has to be a number of seconds, and live at most ``max_lifetime``."""
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or
                                   not isinstance(value, int | float)):
                raise AuthError(401, f"The bearer token's {name!r} claim is not a number.",
                                _challenge("invalid_token"))
        exp = claims["exp"]
        now = time.time()
        iat = claims.get("iat")
        start = now if iat is None else min(now, iat)
        if exp - start > self.max_lifetime + LEEWAY:
            raise AuthError(401, f"The bearer token lives longer than {self.max_lifetime:g} s.",
                            _challenge("invalid_token"))


def _scopes_of(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return set(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return {str(s) for s in scp}
    return set()


def _read(path: str, base_dir: Path | None, setting: str) -> str:
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(setting, f"cannot read {p}: {exc.strerror}") from exc


def mint_token(
    secret: str,
    *,
    subject: str,
    scopes: list[str],
    ttl: float,
    algorithm: str = "HS256",
    private_key: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    key_id: str | None = None,
) -> str:
    """A signed JWT for development: ``sub`` = ``subject``, ``scope`` = the space-separated
    ``scopes``, ``iat`` now and ``exp`` ``ttl`` seconds later (plus ``iss``/``aud``/``kid`` when
    given). HS256 signs with ``secret``; RS256 with ``private_key`` (PEM; ``secret`` is used as
    the PEM when ``private_key`` is ``None``). Raises :class:`ConfigurationError` for a bad
    algorithm, ``ttl`` or key."""
    if algorithm not in ("HS256", "RS256"):
        raise ConfigurationError("algorithm", f"must be HS256 or RS256, got {algorithm!r}")
    if not ttl > 0:
        raise ConfigurationError("ttl", f"must be > 0 seconds, got {ttl}")
    key = secret if algorithm == "HS256" else (private_key or secret)
    if not key:
        raise ConfigurationError("secret" if algorithm == "HS256" else "private_key",
                                 "is empty")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "scope": " ".join(scopes), "iat": now,
                              "exp": now + max(1, round(ttl))}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    try:
        return jwt.encode(claims, key, algorithm=algorithm,
                          headers={"kid": key_id} if key_id else None)
    except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
        raise ConfigurationError("private_key", f"cannot sign with it: {exc}") from exc

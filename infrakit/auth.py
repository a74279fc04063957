"""Bearer JWTs from the profile: verify one, issue one that is stored.

:class:`JwtAuth` is built from the ``auth`` section (``infra.auth`` holds the
running one) and does two things:

- :meth:`JwtAuth.verify` checks a token in this order, cheapest first: its size
  (``auth.max_token_bytes``, before any decoding), its header's algorithm
  against the allow-list, the signature with the profile's key, then ``exp``,
  ``nbf``, ``iat`` (with ``auth.leeway_s``), ``iss``, ``aud`` and the required
  claims. The caller then asks the token store whether the ``jti`` is still
  valid (``require_token()`` does). Every refusal is a
  :class:`~infrakit.errors.TokenRejectedError` in the kit's own words; PyJWT's
  detail (which claim, which check) would help an attacker more than a client.
- :meth:`JwtAuth.issue` (and :func:`issue_token`) signs a token and stores its
  ``jti`` in the token store before handing it out: when storing fails, the
  caller gets the store's error and no token, so a token that
  ``require_token()`` would refuse as unknown is never given to a client.

Keys: HMAC (``auth.secret``), a static public key (``auth.public_key[_file]``,
or the public half of ``auth.private_key[_file]``), or a JWKS. A JWKS is
fetched with PyJWT's ``PyJWKClient`` in a worker thread (the fetch blocks),
kept for ``auth.jwks_cache_s``, and fetched again when a token names a ``kid``
it does not hold (a rotated key) — at most once per ``auth.jwks_min_refetch_s``,
whoever asks, so tokens with made-up ``kid`` values cannot turn every request
into a fetch. A fetch replaces the whole set: a key removed from the JWKS is
refused once the set is fetched again. When a fetch fails the keys already
held stay in use (with a warning); with none held, verification is an
:class:`~infrakit.errors.AuthError` (``require_token()`` answers 503).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from infrakit.errors import AuthError, ConfigError, ConfigProblem, TokenRejectedError
from infrakit.settings.auth import AuthSettings, load_private_key, load_public_key
from infrakit.values import install_line

if TYPE_CHECKING:
    from infrakit.tokens.base import TokenStore

__all__ = ["IssuedToken", "JwtAuth", "issue_token"]

_log = logging.getLogger("infrakit.auth")

#: Claims :meth:`JwtAuth.issue` sets itself; ``claims=`` cannot replace them.
RESERVED_CLAIMS = frozenset({"sub", "jti", "iat", "nbf", "exp", "iss", "aud"})
_MAX_KID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A signed token whose ``jti`` is in the token store.

    ``token`` is the credential itself: it is left out of the repr.
    """

    token: str = field(repr=False)
    jti: str
    subject: str
    expires_at: datetime


class _Running(Protocol):
    """What :func:`issue_token` needs of an :class:`~infrakit.Infra`."""

    @property
    def auth(self) -> JwtAuth: ...

    @property
    def tokens(self) -> TokenStore: ...


async def issue_token(
    infra: _Running,
    subject: str,
    *,
    claims: Mapping[str, Any] | None = None,
    ttl_s: int | None = None,
) -> IssuedToken:
    """Sign a token for ``subject`` with the profile's key and store it in
    ``infra.tokens``; see :meth:`JwtAuth.issue`."""
    return await infra.auth.issue(infra.tokens, subject, claims=claims, ttl_s=ttl_s)


def _jwt() -> Any:
    try:
        import jwt
    except ImportError:
        raise ConfigError(
            ConfigProblem(
                "verifying and issuing JWTs needs the 'pyjwt' package, which is not installed",
                key="auth",
                hint=install_line("fastapi"),
            )
        ) from None
    return jwt


class _Jwks:
    """The keys of a JWKS endpoint, by ``kid``, fetched as the module docstring says."""

    def __init__(self, settings: AuthSettings) -> None:
        assert settings.jwks_url is not None
        self._url = settings.jwks_url
        self._settings = settings
        self._keys: dict[str, tuple[Any, str | None]] | None = None
        self._fetched_at = 0.0  # monotonic time of the last successful fetch
        self._tried_at: float | None = None  # ... and of the last attempt
        self._lock: asyncio.Lock | None = None
        self._client: Any = None

    async def key(self, kid: str) -> tuple[Any, str | None] | None:
        """The key with ``kid`` and the algorithm the JWKS declares for it, if any."""
        keys = self._keys
        stale = keys is None or time.monotonic() - self._fetched_at >= self._settings.jwks_cache_s
        if stale or kid not in (keys or {}):
            await self._refresh()
        if self._keys is None:
            raise AuthError(
                "the JWKS could not be fetched, so no token can be verified "
                "(auth.jwks_url; the warning logged before says why)"
            )
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        """Fetch the set again, unless another request just did or tried (at
        most one attempt per ``jwks_min_refetch_s``, the first one excepted)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        tried = self._tried_at
        async with self._lock:
            if self._tried_at != tried:
                return  # fetched (or tried) while this request waited: use that
            now = time.monotonic()
            last = self._tried_at
            if last is not None and now - last < self._settings.jwks_min_refetch_s:
                return
            self._tried_at = now
            try:
                keys = await asyncio.to_thread(self._fetch)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the keys held
                held = "keeping the keys fetched before" if self._keys else "no keys held"
                _log.warning(
                    "infrakit: could not fetch the JWKS (%s: %s); %s",
                    type(exc).__name__,
                    exc,
                    held,
                )
                return
            self._keys = keys
            self._fetched_at = time.monotonic()

    def _fetch(self) -> dict[str, tuple[Any, str | None]]:
        """One fetch (blocking: runs in a worker thread)."""
        jwt = _jwt()
        if self._client is None:
            self._client = jwt.PyJWKClient(
                self._url, cache_jwk_set=False, timeout=self._settings.jwks_timeout_s
            )
        data = self._client.fetch_data()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("the JWKS document has no 'keys' list")
        keys: dict[str, tuple[Any, str | None]] = {}
        for raw in data["keys"]:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            kid = raw.get("kid")
            if not isinstance(kid, str) or not kid:
                continue
            try:
                jwk = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue  # a key of a type PyJWT cannot use: not ours to verify with
            declared = raw.get("alg")
            keys[kid] = (jwk.key, declared if isinstance(declared, str) else None)
        if not keys:
            raise ValueError("the JWKS has no usable signing key with a 'kid'")
        return keys


class JwtAuth:
    """Verifies and issues JWTs as the ``auth`` section says (see the module docstring).

    Building one reads nothing: keys are loaded when first used.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._verify_key: Any = None
        self._sign_key: Any = None
        self._jwks = _Jwks(settings) if settings.jwks_url is not None else None

    @property
    def settings(self) -> AuthSettings:
        return self._settings

    # --- verifying ---------------------------------------------------------

    def require_key(self) -> None:
        """Raise :class:`ConfigError` when the profile gives no key to verify with."""
        if not self._settings.configured:
            raise ConfigError(
                ConfigProblem(
                    "no key to verify tokens with",
                    key="auth",
                    hint="set auth.secret (HS256), auth.public_key_file or auth.jwks_url "
                    "in the profile, or pass key= to require_token()",
                )
            )

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature and claims check out.

        Raises :class:`TokenRejectedError` (``detail``: ``invalid token``,
        ``token expired`` or ``token too large``), :class:`AuthError` when the
        keys cannot be had (a JWKS that cannot be fetched), :class:`ConfigError`
        when the profile gives no key.
        """
        cfg = self._settings
        self.require_key()
        if len(token) > cfg.max_token_bytes:
            raise TokenRejectedError("token too large")
        if not token.isascii():
            raise TokenRejectedError("invalid token")
        jwt = _jwt()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise self._invalid("malformed header") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in cfg.algorithms:
            raise self._invalid("algorithm not allowed")
        key = await self._key_for(header, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_s,
                options={"require": list(cfg.required_claims)},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejectedError("token expired") from None
        except jwt.PyJWTError as error:
            raise self._invalid(type(error).__name__) from None
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti.strip():
            raise self._invalid("jti is not a non-empty string")
        return claims

    @staticmethod
    def _invalid(why: str) -> TokenRejectedError:
        _log.info("infrakit: token refused: %s", why)
        return TokenRejectedError("invalid token")

    async def _key_for(self, header: Mapping[str, Any], algorithm: str) -> Any:
        if self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
                raise self._invalid("no usable kid for the JWKS")
            found = await self._jwks.key(kid)
            if found is None:
                raise self._invalid("unknown kid")
            key, declared = found
            if declared is not None and declared != algorithm:
                raise self._invalid("algorithm differs from the key's")
            return key
        if self._verify_key is None:
            self._verify_key = self._static_verify_key()
        return self._verify_key

    def _static_verify_key(self) -> Any:
        cfg = self._settings
        if cfg.hmac:
            assert cfg.secret is not None
            return cfg.secret.get_secret_value().encode()
        if cfg.public_key is not None:
            return load_public_key(cfg.public_key)
        if cfg.public_key_file is not None:
            with open(cfg.public_key_file, "rb") as file:
                return load_public_key(file.read())
        return self._signing_key().public_key()

    # --- issuing -----------------------------------------------------------

    def _signing_key(self) -> Any:
        if self._sign_key is not None:
            return self._sign_key
        cfg = self._settings
        if not cfg.can_sign:
            raise ConfigError(
                ConfigProblem(
                    "no key to sign tokens with (this profile only verifies them)",
                    key="auth",
                    hint="set auth.secret (HS256) or auth.private_key_file (RS256, ES256, ...)",
                )
            )
        if cfg.hmac:
            assert cfg.secret is not None
            self._sign_key = cfg.secret.get_secret_value().encode()
        elif cfg.private_key is not None:
            self._sign_key = load_private_key(cfg.private_key.get_secret_value())
        else:
            assert cfg.private_key_file is not None
            with open(cfg.private_key_file, "rb") as file:
                self._sign_key = load_private_key(file.read())
        return self._sign_key

    def sign(self, claims: Mapping[str, Any]) -> str:
        """``claims`` signed with the profile's key and first algorithm (and
        ``auth.key_id`` as the ``kid`` header). Stores nothing: use :meth:`issue`."""
        jwt = _jwt()
        cfg = self._settings
        headers = {"kid": cfg.key_id} if cfg.key_id is not None else None
        token: str = jwt.encode(
            dict(claims), self._signing_key(), algorithm=cfg.algorithms[0], headers=headers
        )
        return token

    async def issue(
        self,
        tokens: TokenStore,
        subject: str,
        *,
        claims: Mapping[str, Any] | None = None,
        ttl_s: int | None = None,
    ) -> IssuedToken:
        """Sign a token for ``subject`` and store its ``jti`` in ``tokens``.

        The token carries ``sub``, a fresh random ``jti``, ``iat``, ``exp``
        (``ttl_s``, else ``auth.access_token_ttl_s``), and ``iss``/``aud`` when
        the profile sets them, plus ``claims`` (which may not replace those).
        Returned only once stored: a failing store raises its
        :class:`~infrakit.errors.TokenStoreError` and no token exists.
        """
        cfg = self._settings
        if not isinstance(subject, str) or not subject.strip():
            raise ValueError(f"subject cannot be empty, got {subject!r}")
        extra = dict(claims or {})
        clash = sorted(RESERVED_CLAIMS & extra.keys())
        if clash:
            raise ValueError(
                f"claims may not set {', '.join(clash)}: issue_token sets them "
                "(ttl_s= sets the lifetime; auth.issuer and auth.audience the others)"
            )
        lifetime = cfg.access_token_ttl_s if ttl_s is None else ttl_s
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 1:
            raise ValueError(f"ttl_s must be a whole number of seconds >= 1, got {ttl_s!r}")
        # whole seconds: exp is a NumericDate, and the store keeps what the token says
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + timedelta(seconds=lifetime)
        jti = uuid.uuid4().hex
        payload: dict[str, Any] = {
            **extra,
            "sub": subject,
            "jti": jti,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
        }
        if cfg.issuer is not None:
            payload["iss"] = cfg.issuer
        if cfg.audience is not None:
            payload["aud"] = cfg.audience
        token = self.sign(payload)
        await tokens.store(jti, subject, expires_at)
        return IssuedToken(token=token, jti=jti, subject=subject, expires_at=expires_at)

    def __repr__(self) -> str:
        source = (
            "jwks"
            if self._jwks is not None
            else ("secret" if self._settings.hmac else "public key")
        )
        return f"JwtAuth(algorithms={self._settings.algorithms}, key={source})"

"""The ``auth`` section: how bearer JWTs are verified and issued.

One family of algorithms per profile: HMAC (``HS*``, a shared ``secret``) or
public-key (``RS*``, ``PS*``, ``ES*``, ``EdDSA``: a ``public_key``/``public_key_file``
or a ``jwks_url``, and a private key when the service issues tokens itself).
Mixing the families in one list is refused: a verifier that accepts HS256 next
to RS256 can be handed an HS256 token "signed" with the RSA public key.

Everything start-up would otherwise reject is checked here, once: the
algorithm names, the key's length (HMAC) or type and size (public keys, read
and parsed from their files now), that a key fits every listed algorithm, and
the JWKS address. The keys are loaded again by :mod:`infrakit.auth` when they
are first used.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from infrakit.settings.base import Section
from infrakit.values import install_line

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "MIN_RSA_BITS",
    "AuthSettings",
    "load_private_key",
    "load_public_key",
]

#: HMAC algorithms and the shortest secret each accepts (bytes): the hash's own
#: output size (RFC 7518, section 3.2).
HMAC_ALGORITHMS: dict[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
#: Public-key algorithms and the key type each needs.
ASYMMETRIC_ALGORITHMS: dict[str, str] = {
    **{f"RS{n}": "RSA" for n in (256, 384, 512)},
    **{f"PS{n}": "RSA" for n in (256, 384, 512)},
    "ES256": "EC P-256",
    "ES384": "EC P-384",
    "ES512": "EC P-521",
    "EdDSA": "Ed25519 or Ed448",
}
#: The smallest RSA key accepted (bits).
MIN_RSA_BITS = 2048
#: Claims the kit itself relies on: the token store keys tokens by ``jti``, and
#: no token lives for ever.
ALWAYS_REQUIRED = ("exp", "jti")
_MAX_KEY_FILE_BYTES = 64 * 1024
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def _crypto_missing() -> str | None:
    """The fix when the public-key support is not installed, else None."""
    if importlib.util.find_spec("cryptography") is None or importlib.util.find_spec("jwt") is None:
        return (
            "public-key algorithms need the 'cryptography' and 'pyjwt' packages: "
            + install_line("fastapi")
        )
    return None


def _key_fits(key: Any, algorithm: str) -> str | None:
    """Why ``key`` (a public or private key object) cannot serve ``algorithm``, or None."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    needed = ASYMMETRIC_ALGORITHMS[algorithm]
    if needed == "RSA":
        if not isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
            return f"{algorithm} needs an RSA key"
        if key.key_size < MIN_RSA_BITS:
            return f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed"
        return None
    if algorithm == "EdDSA":
        kinds = (
            ed25519.Ed25519PublicKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PublicKey,
            ed448.Ed448PrivateKey,
        )
        return None if isinstance(key, kinds) else "EdDSA needs an Ed25519 or Ed448 key"
    curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[algorithm]
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"{algorithm} needs an {needed} key"
    if not isinstance(key.curve, curve):
        return f"{algorithm} needs an {needed} key, not {key.curve.name}"
    return None


def _read_key_file(path: str) -> bytes:
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if size > _MAX_KEY_FILE_BYTES:
            raise ValueError(f"file {path!r} is {size} bytes; a PEM key is far smaller")
        return file.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None


def load_public_key(pem: str | bytes) -> PublicKeyTypes:
    """A PEM public key (or X.509 certificate) as a ``cryptography`` key object."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        if b"PRIVATE KEY-----" in data:
            raise ValueError("this is a private key; give the public key here") from None
        raise ValueError(f"not a PEM public key ({type(exc).__name__})") from None


def load_private_key(pem: str | bytes) -> PrivateKeyTypes:
    """A PEM private key (unencrypted) as a ``cryptography`` key object."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # (the key's text never reaches the message)
        raise ValueError(
            f"not an unencrypted PEM private key ({type(exc).__name__}); "
            "export it with `openssl pkey -in key.pem -out plain.pem`"
        ) from None


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthSettings(Section):
    """Bearer JWTs: how `require_token()` verifies them and `issue_token` signs them."""

    algorithms: list[str] = Field(
        default_factory=lambda: ["HS256"],
        min_length=1,
        description="Accepted algorithms (an allow-list; the first one signs issued tokens): "
        "HS256/HS384/HS512 with `secret`, or RS*/PS*/ES256/ES384/ES512/EdDSA with a public key "
        "or `jwks_url`. `none` is never accepted and HS* cannot be mixed with the others.",
    )
    secret: SecretStr | None = Field(
        None,
        description="HMAC key (HS* only): at least 32 bytes for HS256, 48 for HS384, 64 for "
        "HS512 (`openssl rand -hex 32`). Take it from the environment: `${JWT_SECRET}`.",
    )
    public_key: str | None = Field(
        None,
        min_length=1,
        description="PEM public key (or X.509 certificate) that verifies tokens "
        "(RS*/PS*/ES*/EdDSA).",
    )
    public_key_file: str | None = Field(
        None,
        min_length=1,
        description="Path of a PEM public key (or certificate) file; read and checked "
        "when the profile is loaded.",
    )
    private_key: SecretStr | None = Field(
        None,
        description="PEM private key that signs issued tokens (RS*/PS*/ES*/EdDSA); also "
        "verifies them when no public key or JWKS is given.",
    )
    private_key_file: str | None = Field(
        None,
        min_length=1,
        description="Path of an unencrypted PEM private key file (instead of `private_key`).",
    )
    key_id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="`kid` header of issued tokens (the key's id in your published JWKS).",
    )
    jwks_url: str | None = Field(
        None,
        min_length=1,
        description="JWKS endpoint whose keys verify tokens (by their `kid`); https, or http "
        "on loopback only. Fetched off the event loop and cached.",
    )
    jwks_cache_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description="Seconds a fetched JWKS is used before it is fetched again.",
    )
    jwks_min_refetch_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="A token with an unknown `kid` (a rotated key) fetches the JWKS again, "
        "at most once per this many seconds.",
    )
    jwks_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="Timeout of one JWKS fetch.",
    )
    issuer: str | None = Field(
        None, min_length=1, description="Expected `iss` (set on issued tokens; checked when set)."
    )
    audience: str | None = Field(
        None, min_length=1, description="Expected `aud` (set on issued tokens; checked when set)."
    )
    leeway_s: float = Field(
        0.0,
        ge=0,
        le=300,
        allow_inf_nan=False,
        description="Clock skew allowed on `exp`, `nbf` and `iat` (seconds).",
    )
    access_token_ttl_s: int = Field(
        900,
        ge=1,
        description="Lifetime of issued tokens (seconds); at most tokens.max_lifetime_s.",
    )
    required_claims: list[str] = Field(
        default_factory=lambda: ["exp", "jti", "sub"],
        description="Claims a token must carry (`exp` and `jti` always: the token store "
        "needs them).",
    )
    max_token_bytes: int = Field(
        8192,
        ge=512,
        le=65536,
        description="Longer bearer tokens are refused before they are decoded.",
    )

    # Messages on the key fields start with a throwaway word: the text scrubber
    # masks the first word after a sensitive key's name, taking it for the value.

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        known = [*HMAC_ALGORITHMS, *ASYMMETRIC_ALGORITHMS]
        for name in value:
            if name.strip().lower() == "none":
                raise ValueError(
                    "'none' (unsigned tokens) is never accepted; list real algorithms, e.g. [HS256]"
                )
            if name not in known:
                raise ValueError(
                    f"unknown algorithm {name!r}; expected some of: {', '.join(known)}"
                )
        if len(set(value)) != len(value):
            raise ValueError("an algorithm is listed twice")
        hmac = [n for n in value if n in HMAC_ALGORITHMS]
        if hmac and len(hmac) != len(value):
            raise ValueError(
                f"HMAC ({', '.join(hmac)}) cannot be mixed with public-key algorithms "
                f"({', '.join(n for n in value if n not in HMAC_ALGORITHMS)}): a token could "
                "then be signed with the public key as its HMAC secret; keep one family"
            )
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        algorithms = info.data.get("algorithms")
        if value is None or algorithms is None:
            return value
        if not value.get_secret_value():
            if algorithms[0] not in HMAC_ALGORITHMS:
                return None  # "no secret" (a profile extended for public keys)
            raise ValueError(
                # worded so the kit's own scrubbing leaves the fix readable: no
                # "NAME=value" or "secret: word" shapes after the key
                f"value empty: {algorithms[0]} needs a secret; make one with "
                "`openssl rand -hex 32` and put it in the environment variable this key is "
                "read from (shown before the key, JWT_SECRET in production)"
            )
        if algorithms[0] not in HMAC_ALGORITHMS:
            raise ValueError(
                f"value unused: {algorithms[0]} verifies with a public key; set "
                "auth.public_key_file, auth.public_key or auth.jwks_url instead of the secret "
                "(or use HS256)"
            )
        need = max(HMAC_ALGORITHMS[n] for n in algorithms)
        have = len(value.get_secret_value().encode())
        if have < need:
            raise ValueError(
                f"value too short: {have} bytes, {', '.join(algorithms)} needs at least {need} "
                f"(make one with `openssl rand -hex {need}`)"
            )
        return value

    @field_validator("public_key", "public_key_file")
    @classmethod
    def _public_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        algorithms = info.data.get("algorithms")
        if value is None or algorithms is None:
            return value
        assert info.field_name is not None
        if info.field_name == "public_key_file" and info.data.get("public_key") is not None:
            raise ValueError("give auth.public_key or auth.public_key_file, not both")
        cls._check_asymmetric(algorithms, f"auth.{info.field_name}")
        pem = _read_key_file(value) if info.field_name == "public_key_file" else value
        key = load_public_key(pem)
        cls._check_fits(key, algorithms)
        return value

    @field_validator("private_key", "private_key_file")
    @classmethod
    def _private_key(cls, value: Any, info: ValidationInfo) -> Any:
        algorithms = info.data.get("algorithms")
        if value is None or algorithms is None:
            return value
        assert info.field_name is not None
        if info.field_name == "private_key_file" and info.data.get("private_key") is not None:
            raise ValueError("give auth.private_key or auth.private_key_file, not both")
        cls._check_asymmetric(algorithms, f"auth.{info.field_name}")
        if isinstance(value, SecretStr):
            key = load_private_key(value.get_secret_value())
        else:
            key = load_private_key(_read_key_file(value))
        cls._check_fits(key, algorithms)
        public = _static_public_key(info.data)
        if public is not None and _public_bytes(public) != _public_bytes(key.public_key()):
            raise ValueError(
                "value does not match the public key: tokens it signs would not verify"
            )
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        algorithms = info.data.get("algorithms")
        if value is None or algorithms is None:
            return value
        cls._check_asymmetric(algorithms, "auth.jwks_url")
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("expected an https:// URL of the JWKS (keys) document")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError(
                "plain http lets anyone on the path replace the keys; use https "
                "(http is accepted on loopback only)"
            )
        if info.data.get("public_key") is not None or info.data.get("public_key_file") is not None:
            raise ValueError(
                "give a public key or a JWKS URL, not both (put every key in the JWKS)"
            )
        return value

    @field_validator("required_claims")
    @classmethod
    def _claims(cls, value: list[str]) -> list[str]:
        missing = [c for c in ALWAYS_REQUIRED if c not in value]
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} must stay required (the token store keys tokens by "
                "jti, and no token may live for ever); add them to the list"
            )
        return value

    @field_validator("key_id")
    @classmethod
    def _key_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        signing = ("secret", "private_key", "private_key_file")
        if value is not None and all(info.data.get(name) is None for name in signing):
            raise ValueError(
                "unused: it names the key that signs issued tokens, and there is none; set "
                "auth.private_key_file (or auth.secret), or remove key_id"
            )
        return value

    # --- helpers ---------------------------------------------------------------

    @staticmethod
    def _check_asymmetric(algorithms: list[str], key: str) -> None:
        if algorithms[0] in HMAC_ALGORITHMS:
            raise ValueError(
                f"{key} is for public-key algorithms (RS256, ES256, ...), but auth.algorithms "
                f"is {algorithms}; set auth.algorithms: [RS256] (or the key's algorithm), "
                "or use auth.secret with HS*"
            )
        missing = _crypto_missing()
        if missing:
            raise ValueError(missing)

    @staticmethod
    def _check_fits(key: Any, algorithms: list[str]) -> None:
        for algorithm in algorithms:
            problem = _key_fits(key, algorithm)
            if problem:
                raise ValueError(f"{problem}; fix auth.algorithms or the key")

    # --- what the rest of the kit asks ----------------------------------------

    @property
    def hmac(self) -> bool:
        """True for the HMAC family (``secret``), False for public keys."""
        return self.algorithms[0] in HMAC_ALGORITHMS

    @property
    def configured(self) -> bool:
        """True when tokens can be verified: a secret, a public or private key, or a JWKS."""
        return any(
            v is not None
            for v in (
                self.secret,
                self.public_key,
                self.public_key_file,
                self.private_key,
                self.private_key_file,
                self.jwks_url,
            )
        )

    @property
    def can_sign(self) -> bool:
        """True when tokens can be issued: a secret or a private key."""
        return any(v is not None for v in (self.secret, self.private_key, self.private_key_file))


def _static_public_key(data: dict[str, Any]) -> Any:
    """The public key already validated in ``data``, if any."""
    if data.get("public_key") is not None:
        return load_public_key(data["public_key"])
    if data.get("public_key_file") is not None:
        return load_public_key(_read_key_file(data["public_key_file"]))
    return None


def _public_bytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    data: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return data

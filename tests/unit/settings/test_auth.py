"""The `auth` section: every bad value is a ConfigError naming the file, line,
key and fix, and the secret never shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from infrakit import ConfigError, load_settings
from infrakit.settings import AuthSettings

SECRET = "a-perfectly-good-secret-0123456789abcdef"


def pem_public(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_private(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def load(tmp_path: Path, text: str) -> ConfigError:
    """The ConfigError a profile with this auth section raises."""
    path = tmp_path / "p.yaml"
    path.write_text("auth:\n" + text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), environ={})
    return caught.value


class TestAlgorithms:
    """An allow-list: never none, never HMAC next to public-key algorithms."""

    @pytest.mark.parametrize("name", ["none", "None", "NONE"])
    def test_none_is_refused(self, tmp_path: Path, name: str) -> None:
        error = load(tmp_path, f"  algorithms: [{name}]\n  secret: {SECRET}\n")
        assert "p.yaml:2:3: auth.algorithms: 'none' (unsigned tokens) is never accepted" in str(
            error
        )

    def test_hs_and_rs_cannot_be_mixed(self, tmp_path: Path) -> None:
        error = load(tmp_path, "  algorithms: [RS256, HS256]\n")
        assert "auth.algorithms: HMAC (HS256) cannot be mixed" in str(error)

    def test_unknown_algorithm(self, tmp_path: Path) -> None:
        error = load(tmp_path, "  algorithms: [HS257]\n")
        assert "unknown algorithm 'HS257'; expected some of: HS256" in str(error)


class TestSecret:
    """HMAC secrets: long enough for the hash, for HMAC only, never shown."""

    @pytest.mark.parametrize(("algorithm", "need"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
    def test_minimum_length(self, tmp_path: Path, algorithm: str, need: int) -> None:
        short = "s" * (need - 1)
        error = load(tmp_path, f"  algorithms: [{algorithm}]\n  secret: {short}\n")
        text = str(error)
        assert "p.yaml:3:3: auth.secret:" in text
        assert f"{need - 1} bytes, {algorithm} needs at least {need}" in text
        assert short not in text
        settings = AuthSettings(algorithms=[algorithm], secret="s" * need)
        assert settings.configured

    def test_secret_with_a_public_key_algorithm(self, tmp_path: Path) -> None:
        error = load(tmp_path, f"  algorithms: [RS256]\n  secret: {SECRET}\n")
        assert "auth.secret:" in str(error)
        assert "RS256 verifies with a public key" in str(error)
        assert SECRET not in str(error)

    def test_masked_in_config_show(self) -> None:
        settings = load_settings("test", environ={}, overrides={"auth.secret": SECRET})
        assert SECRET not in repr(settings)
        assert SECRET not in str(settings.masked())
        assert settings.masked()["auth"]["secret"] == "**********"

    def test_env_variable_in_production(self) -> None:
        settings = load_settings("single-host", environ={"JWT_SECRET": SECRET})
        assert settings.auth.secret is not None
        assert settings.auth.secret.get_secret_value() == SECRET
        assert "JWT_SECRET" in settings.sources()["auth.secret"]

    def test_a_profile_extending_production_can_use_public_keys(
        self, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
    ) -> None:
        public = tmp_path / "jwt.pub"
        public.write_bytes(pem_public(rsa_key))
        profile = tmp_path / "rs.yaml"
        profile.write_text(
            f"extends: production\nauth:\n  algorithms: [RS256]\n  public_key_file: {public}\n",
            encoding="utf-8",
        )
        addresses = {
            "DATABASE_URL": "postgresql+asyncpg://db/app",
            "REDIS_URL": "redis://cache:6379/0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
        }
        settings = load_settings(str(profile), environ=addresses)  # no JWT_SECRET needed
        assert settings.auth.secret is None
        assert not settings.auth.hmac


class TestKeys:
    """Public and private keys are read and checked when the profile is loaded."""

    def test_key_file_missing(self, tmp_path: Path) -> None:
        error = load(tmp_path, "  algorithms: [RS256]\n  public_key_file: /nonexistent/k.pem\n")
        assert "p.yaml:3:3: auth.public_key_file: cannot read '/nonexistent/k.pem'" in str(error)

    def test_not_a_key(self, tmp_path: Path) -> None:
        junk = tmp_path / "junk.pem"
        junk.write_text("hello", encoding="utf-8")
        error = load(tmp_path, f"  algorithms: [RS256]\n  public_key_file: {junk}\n")
        assert "auth.public_key_file: not a PEM public key" in str(error)

    def test_key_type_must_fit_the_algorithm(
        self, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
    ) -> None:
        public = tmp_path / "rsa.pub"
        public.write_bytes(pem_public(rsa_key))
        error = load(tmp_path, f"  algorithms: [ES256]\n  public_key_file: {public}\n")
        assert "ES256 needs an EC P-256 key" in str(error)
        ec_key = tmp_path / "ec384.pub"
        ec_key.write_bytes(pem_public(ec.generate_private_key(ec.SECP384R1())))
        error = load(tmp_path, f"  algorithms: [ES256]\n  public_key_file: {ec_key}\n")
        assert "ES256 needs an EC P-256 key, not secp384r1" in str(error)
        ed = tmp_path / "ed.pub"
        ed.write_bytes(pem_public(ed25519.Ed25519PrivateKey.generate()))
        assert AuthSettings(algorithms=["EdDSA"], public_key_file=str(ed)).configured

    def test_short_rsa_keys_are_refused(self, tmp_path: Path) -> None:
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        public = tmp_path / "weak.pub"
        public.write_bytes(pem_public(weak))
        error = load(tmp_path, f"  algorithms: [RS256]\n  public_key_file: {public}\n")
        assert "the RSA key has 1024 bits; at least 2048 are needed" in str(error)

    def test_a_private_key_is_not_a_public_key(
        self, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
    ) -> None:
        private = tmp_path / "jwt.key"
        private.write_bytes(pem_private(rsa_key))
        error = load(tmp_path, f"  algorithms: [RS256]\n  public_key_file: {private}\n")
        assert "this is a private key; give the public key here" in str(error)
        assert "PRIVATE" not in str(error).replace("this is a private key", "")

    def test_private_key_must_match_the_public_key(
        self, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
    ) -> None:
        public = tmp_path / "jwt.pub"
        public.write_bytes(pem_public(rsa_key))
        other = tmp_path / "other.key"
        other.write_bytes(pem_private(rsa.generate_private_key(65537, 2048)))
        error = load(
            tmp_path,
            f"  algorithms: [RS256]\n  public_key_file: {public}\n  private_key_file: {other}\n",
        )
        assert "auth.private_key_file: value does not match the public key" in str(error)

    def test_a_public_key_with_hmac(self, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
        public = tmp_path / "jwt.pub"
        public.write_bytes(pem_public(rsa_key))
        error = load(tmp_path, f"  public_key_file: {public}\n")
        assert "auth.public_key_file is for public-key algorithms" in str(error)

    def test_key_id_needs_a_signing_key(self, tmp_path: Path) -> None:
        error = load(tmp_path, "  algorithms: [ES256]\n  key_id: k1\n")
        assert "auth.key_id: unused" in str(error)


class TestJwks:
    """A JWKS URL: https, or http on loopback; not next to a static public key."""

    @pytest.mark.parametrize(
        "url",
        [
            "https://idp.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/k",
        ],
    )
    def test_accepted(self, url: str) -> None:
        assert AuthSettings(algorithms=["ES256"], jwks_url=url).configured

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("http://idp.example/jwks", "plain http lets anyone on the path replace the keys"),
            ("file:///etc/keys.json", "expected an https:// URL"),
            ("idp.example/jwks", "expected an https:// URL"),
        ],
    )
    def test_refused(self, tmp_path: Path, url: str, message: str) -> None:
        error = load(tmp_path, f"  algorithms: [ES256]\n  jwks_url: {url}\n")
        assert "p.yaml:3:3: auth.jwks_url:" in str(error)
        assert message in str(error)


class TestClaimsAndLifetimes:
    """exp and jti stay required; issued tokens fit the token store."""

    def test_jti_and_exp_stay_required(self, tmp_path: Path) -> None:
        error = load(tmp_path, f"  secret: {SECRET}\n  required_claims: [sub]\n")
        assert "auth.required_claims: exp and jti must stay required" in str(error)

    def test_ttl_longer_than_the_store_keeps_tokens(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(
                "test",
                environ={},
                overrides={"tokens.max_lifetime_s": 3600, "auth.access_token_ttl_s": 7200},
            )
        assert "auth.access_token_ttl_s (7200) is longer than tokens.max_lifetime_s (3600)" in str(
            caught.value
        )

    def test_defaults(self) -> None:
        settings = AuthSettings()
        assert settings.algorithms == ["HS256"]
        assert settings.required_claims == ["exp", "jti", "sub"]
        assert (settings.access_token_ttl_s, settings.max_token_bytes) == (900, 8192)
        assert not settings.configured

"""Auth from the profile, at the HTTP response: require_token() and issue_token
with each algorithm family (HS256 secret, RS256 key files, ES256 from a JWKS
served on loopback), and the attacks that must keep failing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, FastAPI

from infrakit import Infra, IssuedToken, issue_token
from infrakit.errors import ConfigError, TokenStoreError
from infrakit.integrations.fastapi import get_infra, install, lifespan, require_token
from infrakit.settings import load_settings
from infrakit.testing import override
from infrakit.tokens import InMemoryTokenStore

TEST_SECRET = "insecure-test-only-jwt-secret-0123456789abcdef"  # profiles/test.yaml


def make_app(**overrides: Any) -> FastAPI:
    """The test profile (auth overridden), with the three ways to ask for a token."""
    app = FastAPI()
    install(app, load_settings("test", environ={}, overrides=overrides))

    @app.get("/bare")
    async def bare(claims: dict[str, Any] = Depends(require_token)) -> dict[str, Any]:  # noqa: B008
        return {"sub": claims["sub"]}

    @app.get("/called")
    async def called(claims: dict[str, Any] = Depends(require_token())) -> dict[str, Any]:  # noqa: B008
        return {"sub": claims["sub"]}

    @app.post("/login/{user}")
    async def login(user: str, infra: Infra = Depends(get_infra)) -> dict[str, Any]:  # noqa: B008
        issued = await issue_token(infra, user)
        return {"token": issued.token, "jti": issued.jti}

    return app


def _claims_of(dependency: Any) -> Callable[..., Any]:
    """A route endpoint that answers the claims ``dependency`` gives."""

    async def endpoint(claims: dict[str, Any] = dependency) -> dict[str, Any]:
        return claims

    return endpoint


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def claims(**extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "sub": "ann",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + timedelta(minutes=5),
        **extra,
    }


async def store(app: FastAPI, payload: Mapping[str, Any]) -> None:
    """What an issuer elsewhere does: the token's jti is in the store."""
    expires = payload["exp"]
    if not isinstance(expires, datetime):
        expires = datetime.now(UTC) + timedelta(minutes=5)
    await app.state.infra.tokens.store(payload["jti"], payload["sub"], expires)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand (PyJWT refuses to make the forgeries below)."""

    def encode(part: dict[str, Any]) -> str:
        return b64(json.dumps(part, default=lambda d: int(d.timestamp())).encode())

    signing_input = f"{encode(header)}.{encode(payload)}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# --- keys ---------------------------------------------------------------------------


@dataclass
class KeyFiles:
    private: Path
    public: Path
    public_pem: bytes
    private_key: Any


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyFiles:
    directory = tmp_path_factory.mktemp("rsa")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "jwt.key"
    public = directory / "jwt.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public.write_bytes(public_pem)
    return KeyFiles(private, public, public_pem, key)


@pytest.fixture(scope="module")
def other_rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TestRequireTokenFromTheProfile:
    """require_token() bare and Depends(require_token) verify with the profile
    (on the previous code: a 422 asking for a `key` query parameter, and a TypeError)."""

    async def test_both_forms_accept_an_issued_token(self) -> None:
        async with running(make_app()) as client:
            login = (await client.post("/login/ann")).json()
            for path in ("/bare", "/called"):
                response = await client.get(path, headers=bearer(login["token"]))
                assert (response.status_code, response.json()) == (200, {"sub": "ann"})

    async def test_no_token_is_401_not_422(self) -> None:
        async with running(make_app()) as client:
            for path in ("/bare", "/called"):
                response = await client.get(path)
                assert response.status_code == 401
                assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_a_client_cannot_pass_the_key(self) -> None:
        """Bare, the dependency has no parameters a request could fill."""
        app = make_app()
        forged = jwt.encode(claims(), "attacker-chosen-secret-0123456789abcdef", "HS256")
        async with running(app) as client:
            await store(app, jwt.decode(forged, options={"verify_signature": False}))
            response = await client.get(
                "/bare",
                params={"key": "attacker-chosen-secret-0123456789abcdef"},
                headers=bearer(forged),
            )
        assert (response.status_code, response.json()) == (401, {"detail": "invalid token"})
        assert "parameters" not in app.openapi()["paths"]["/bare"]["get"]

    async def test_explicit_arguments_override_the_profile(self) -> None:
        app = make_app()
        other = "another-explicit-secret-0123456789abcdef"

        @app.get("/explicit")
        async def explicit(
            claims: dict[str, Any] = Depends(require_token(key=other)),  # noqa: B008
        ) -> dict[str, Any]:
            return {"sub": claims["sub"]}

        @app.get("/audience")
        async def audience(
            claims: dict[str, Any] = Depends(require_token(audience="billing")),  # noqa: B008
        ) -> dict[str, Any]:
            return {"sub": claims["sub"]}

        async with running(app) as client:
            profile_token = (await client.post("/login/ann")).json()["token"]
            own = claims()
            await store(app, own)
            theirs = jwt.encode(own, other, "HS256")
            assert (await client.get("/explicit", headers=bearer(theirs))).status_code == 200
            assert (await client.get("/explicit", headers=bearer(profile_token))).status_code == 401
            # the profile's token has no aud: refused where an audience is required
            assert (await client.get("/audience", headers=bearer(profile_token))).status_code == 401

    def test_explicit_arguments_are_validated_like_the_profile(self) -> None:
        with pytest.raises(ConfigError, match="too short"):
            require_token(key="short")
        with pytest.raises(ConfigError, match="never accepted"):
            require_token(key="k" * 32, algorithms=["none"])
        with pytest.raises(ConfigError, match="cannot be mixed"):
            require_token(key="k" * 32, algorithms=["HS256", "RS256"])

    @pytest.mark.parametrize("path", ["bare", "called", "mounted"])
    async def test_no_key_in_the_profile_stops_the_start_naming_the_fix(self, path: str) -> None:
        """A route that checks tokens with the profile's auth section and a
        profile with no key: the app does not start (every such request would
        answer 500), whichever way the route asks and wherever it is mounted."""
        app = FastAPI()
        install(app, load_settings("test", environ={}, overrides={"auth.secret": None}))
        if path == "bare":
            app.get("/r")(_claims_of(Depends(require_token)))
        elif path == "called":
            app.get("/r")(_claims_of(Depends(require_token())))
        else:
            sub = FastAPI()
            sub.get("/r")(_claims_of(Depends(require_token)))
            app.mount("/sub", sub)
        with pytest.raises(ConfigError, match="no key to verify tokens") as caught:
            async with app.router.lifespan_context(app):
                pass
        assert "auth.secret" in str(caught.value)

    async def test_no_key_and_no_route_that_needs_one_starts(self) -> None:
        app = FastAPI()
        install(app, load_settings("test", environ={}, overrides={"auth.secret": None}))
        app.get("/explicit")(_claims_of(Depends(require_token(key="k" * 32))))
        async with running(app) as client:
            assert (await client.get("/health/live")).status_code == 200

    async def test_no_key_without_install_is_a_server_error_naming_the_fix(self) -> None:
        """With the lifespan alone (no install), the check is at request time."""
        settings = load_settings("test", environ={}, overrides={"auth.secret": None})
        app = FastAPI(lifespan=lifespan(settings))
        app.get("/bare")(_claims_of(Depends(require_token)))
        transport = httpx.ASGITransport(app=app)  # the app's exception reaches the test
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            with pytest.raises(ConfigError, match="no key to verify tokens") as caught:
                await client.get("/bare", headers=bearer("a.b.c"))
        assert "auth.secret" in str(caught.value)

    async def test_token_store_down_is_503(self) -> None:
        class BrokenStore(InMemoryTokenStore):
            async def is_valid(self, jti: str, *, user_id: str | None = None) -> bool:
                raise TokenStoreError("redis down")

        app = make_app()
        async with running(app) as client:
            token = (await client.post("/login/ann")).json()["token"]
            with override(app.state.infra, tokens=BrokenStore()):
                response = await client.get("/bare", headers=bearer(token))
        assert (response.status_code, response.json()) == (
            503,
            {"detail": "token store unavailable"},
        )

    async def test_two_authorization_headers_are_refused(self) -> None:
        async with running(make_app()) as client:
            token = (await client.post("/login/ann")).json()["token"]
            response = await client.get("/bare", headers=[("authorization", f"Bearer {token}")] * 2)
        assert response.json() == {"detail": "more than one Authorization header"}


class TestHS256:
    """The profile's secret signs and verifies; the store decides what is live."""

    async def test_login_me_logout_revoked(self) -> None:
        app = make_app()
        async with running(app) as client:
            login = (await client.post("/login/ann")).json()
            assert (await client.get("/bare", headers=bearer(login["token"]))).status_code == 200
            assert await app.state.infra.tokens.revoke(login["jti"])
            response = await client.get("/bare", headers=bearer(login["token"]))
        assert (response.status_code, response.json()) == (
            401,
            {"detail": "token revoked or unknown"},
        )

    async def test_issued_claims(self) -> None:
        app = make_app(**{"auth.issuer": "https://auth.test", "auth.audience": "orders"})
        async with running(app) as client:
            issued = await issue_token(app.state.infra, "ann", claims={"role": "admin"}, ttl_s=60)
            decoded = jwt.decode(
                issued.token, TEST_SECRET, ["HS256"], audience="orders", issuer="https://auth.test"
            )
            stored = await app.state.infra.tokens.get(issued.jti)
            assert (await client.get("/bare", headers=bearer(issued.token))).status_code == 200
        assert decoded["role"] == "admin"
        assert decoded["jti"] == issued.jti
        assert decoded["exp"] - decoded["iat"] == 60
        assert stored is not None
        assert stored.expires_at == issued.expires_at
        assert stored.expires_at.timestamp() == decoded["exp"]
        assert issued.token not in repr(issued)

    async def test_a_token_of_another_secret_is_refused(self) -> None:
        app = make_app()
        payload = claims()
        async with running(app) as client:
            await store(app, payload)
            forged = jwt.encode(payload, "x" * 32, "HS256")
            response = await client.get("/bare", headers=bearer(forged))
        assert (response.status_code, response.json()) == (401, {"detail": "invalid token"})


class TestRS256KeyFiles:
    """RS256 with a key pair in PEM files: the private key issues, the public verifies."""

    def overrides(self, keys: KeyFiles, *, private: bool = True) -> dict[str, Any]:
        values: dict[str, Any] = {
            "auth.secret": None,
            "auth.algorithms": ["RS256"],
            "auth.public_key_file": str(keys.public),
        }
        if private:
            values["auth.private_key_file"] = str(keys.private)
        return values

    async def test_issue_and_verify(self, rsa_keys: KeyFiles) -> None:
        async with running(make_app(**self.overrides(rsa_keys))) as client:
            token = (await client.post("/login/ann")).json()["token"]
            response = await client.get("/bare", headers=bearer(token))
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
        assert (response.status_code, response.json()) == (200, {"sub": "ann"})

    async def test_a_token_of_another_key_is_refused(
        self, rsa_keys: KeyFiles, other_rsa_key: Any
    ) -> None:
        app = make_app(**self.overrides(rsa_keys, private=False))
        payload = claims()
        async with running(app) as client:
            await store(app, payload)
            good = jwt.encode(payload, rsa_keys.private_key, "RS256")
            forged = jwt.encode(payload, other_rsa_key, "RS256")
            assert (await client.get("/bare", headers=bearer(good))).status_code == 200
            response = await client.get("/bare", headers=bearer(forged))
        assert (response.status_code, response.json()) == (401, {"detail": "invalid token"})

    async def test_hs_rs_confusion(self, rsa_keys: KeyFiles) -> None:
        """An HS256 token whose HMAC key is the server's RSA public key (which
        anyone may have) is refused: HS256 is not in the list, and could not be."""
        app = make_app(**self.overrides(rsa_keys, private=False))
        payload = claims()
        async with running(app) as client:
            await store(app, payload)
            for key in (rsa_keys.public_pem, rsa_keys.public_pem.strip()):
                forged = hand_signed({"alg": "HS256", "typ": "JWT"}, payload, key)
                response = await client.get("/bare", headers=bearer(forged))
                assert (response.status_code, response.json()) == (401, {"detail": "invalid token"})

    async def test_a_verify_only_profile_cannot_issue(self, rsa_keys: KeyFiles) -> None:
        app = make_app(**self.overrides(rsa_keys, private=False))
        async with running(app):
            with pytest.raises(ConfigError, match="no key to sign tokens with"):
                await issue_token(app.state.infra, "ann")
            assert await app.state.infra.tokens.count() == 0


class TestAttacks:
    """The attacks that fail today keep failing, at the HTTP response."""

    @pytest.mark.parametrize(
        ("name", "make", "detail"),
        [
            (
                "alg none",
                lambda p: hand_signed({"alg": "none", "typ": "JWT"}, p, None),
                "invalid token",
            ),
            (
                "alg None, capitalised",
                lambda p: hand_signed({"alg": "None", "typ": "JWT"}, p, None),
                "invalid token",
            ),
            (
                "expired",
                lambda p: jwt.encode(
                    {**p, "exp": datetime.now(UTC) - timedelta(minutes=1)}, TEST_SECRET, "HS256"
                ),
                "token expired",
            ),
            (
                "nbf in the future",
                lambda p: jwt.encode(
                    {**p, "nbf": datetime.now(UTC) + timedelta(minutes=2)}, TEST_SECRET, "HS256"
                ),
                "invalid token",
            ),
            (
                "no jti",
                lambda p: jwt.encode({k: v for k, v in p.items() if k != "jti"}, TEST_SECRET),
                "invalid token",
            ),
            (
                "no sub",
                lambda p: jwt.encode({k: v for k, v in p.items() if k != "sub"}, TEST_SECRET),
                "invalid token",
            ),
            (
                "no exp",
                lambda p: jwt.encode({k: v for k, v in p.items() if k != "exp"}, TEST_SECRET),
                "invalid token",
            ),
            (
                "HS512 with the same secret",
                lambda p: jwt.encode(p, TEST_SECRET + "0" * 20, "HS512"),
                "invalid token",
            ),
            (
                "oversize",
                lambda p: jwt.encode({**p, "pad": "x" * 9000}, TEST_SECRET, "HS256"),
                "token too large",
            ),
            ("not a JWT", lambda p: "not.a.jwt", "invalid token"),
        ],
    )
    async def test_refused(self, name: str, make: Any, detail: str) -> None:
        app = make_app()
        payload = claims()
        async with running(app) as client:
            await store(app, payload)  # the jti is live: only the attack is wrong
            response = await client.get("/bare", headers=bearer(make(payload)))
        assert (response.status_code, response.json()) == (401, {"detail": detail}), name

    async def test_the_size_bound_is_the_profiles(self) -> None:
        """A valid, stored token just over auth.max_token_bytes is refused
        (before decoding); the same token passes with a larger bound."""
        payload = claims(pad="x" * 1200)
        token = jwt.encode(payload, TEST_SECRET, "HS256")
        for bound, status in ((1024, 401), (2048, 200)):
            app = make_app(**{"auth.max_token_bytes": bound})
            async with running(app) as client:
                await store(app, payload)
                response = await client.get("/bare", headers=bearer(token))
            assert response.status_code == status, bound

    async def test_leeway(self) -> None:
        payload = claims(exp=datetime.now(UTC) - timedelta(seconds=5))
        token = jwt.encode(payload, TEST_SECRET, "HS256")
        for leeway, status in ((0, 401), (60, 200)):
            app = make_app(**{"auth.leeway_s": leeway})
            async with running(app) as client:
                await app.state.infra.tokens.store(
                    payload["jti"], "ann", datetime.now(UTC) + timedelta(minutes=1)
                )
                response = await client.get("/bare", headers=bearer(token))
            assert response.status_code == status, leeway

    async def test_issuer_and_audience(self) -> None:
        app = make_app(**{"auth.issuer": "https://auth.test", "auth.audience": "orders"})
        async with running(app) as client:
            for extra in (
                {},
                {"iss": "https://evil.test", "aud": "orders"},
                {"iss": "https://auth.test", "aud": "other"},
            ):
                payload = claims(**extra)
                await store(app, payload)
                response = await client.get(
                    "/bare", headers=bearer(jwt.encode(payload, TEST_SECRET, "HS256"))
                )
                assert (response.status_code, response.json()) == (
                    401,
                    {"detail": "invalid token"},
                ), extra


class TestIssueToken:
    """A token is never handed out without being in the store."""

    async def test_storing_fails_no_token(self) -> None:
        class Down(InMemoryTokenStore):
            async def store(self, jti: str, user_id: str, expires_at: datetime) -> Any:
                raise TokenStoreError("redis down")

        async with Infra(load_settings("test", environ={})) as infra:
            with override(infra, tokens=Down()), pytest.raises(TokenStoreError):
                await issue_token(infra, "ann")

    async def test_reserved_claims_and_lifetimes(self) -> None:
        async with Infra(load_settings("test", environ={})) as infra:
            with pytest.raises(ValueError, match="may not set exp, jti"):
                await issue_token(infra, "ann", claims={"jti": "mine", "exp": 1})
            with pytest.raises(ValueError, match="ttl_s"):
                await issue_token(infra, "ann", ttl_s=0)
            with pytest.raises(ValueError, match="max_lifetime_s"):
                await issue_token(infra, "ann", ttl_s=10**9)
            with pytest.raises(ValueError, match="subject"):
                await issue_token(infra, " ")
            assert await infra.tokens.count() == 0
            issued = await issue_token(infra, "ann")
            assert isinstance(issued, IssuedToken)
            assert await infra.tokens.count() == 1


# --- ES256 from a JWKS served on loopback ------------------------------------------


@dataclass
class Jwks:
    """A JWKS endpoint on a loopback port: the keys it serves can change, and it
    counts the fetches."""

    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    fetches: int = 0
    down: bool = False
    url: str = ""

    def document(self) -> bytes:
        entries = []
        for kid, key in self.keys.items():
            entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            entry.update(kid=kid, alg="ES256", use="sig")
            entries.append(entry)
        return json.dumps({"keys": entries}).encode()

    def sign(self, kid: str, payload: dict[str, Any], key: Any = None) -> str:
        return jwt.encode(payload, key or self.keys[kid], "ES256", headers={"kid": kid})


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    state = Jwks(keys={"k1": ec.generate_private_key(ec.SECP256R1())})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            if state.down:
                self.send_error(503)
                return
            body = state.document()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def jwks_app(jwks: Jwks, **overrides: Any) -> FastAPI:
    return make_app(
        **{
            "auth.secret": None,
            "auth.algorithms": ["ES256"],
            "auth.jwks_url": jwks.url,
            "auth.jwks_min_refetch_s": 0,
            **overrides,
        }
    )


class TestES256Jwks:
    """Keys by kid from a JWKS: cached, refetched for a new kid, removed keys refused."""

    async def test_verify_and_cache(self, jwks: Jwks) -> None:
        app = jwks_app(jwks)
        async with running(app) as client:
            for _ in range(3):
                payload = claims()
                await store(app, payload)
                response = await client.get("/bare", headers=bearer(jwks.sign("k1", payload)))
                assert (response.status_code, response.json()) == (200, {"sub": "ann"})
        assert jwks.fetches == 1  # cached

    async def test_rotation(self, jwks: Jwks) -> None:
        app = jwks_app(jwks)
        old_key = jwks.keys["k1"]
        async with running(app) as client:
            first = claims()
            await store(app, first)
            assert (
                await client.get("/bare", headers=bearer(jwks.sign("k1", first)))
            ).status_code == 200
            # the issuer rotates: k2 appears, k1 is withdrawn
            jwks.keys = {"k2": ec.generate_private_key(ec.SECP256R1())}
            second = claims()
            await store(app, second)
            response = await client.get("/bare", headers=bearer(jwks.sign("k2", second)))
            assert response.status_code == 200  # unknown kid: fetched again, accepted
            assert jwks.fetches == 2
            again = claims()
            await store(app, again)
            response = await client.get("/bare", headers=bearer(jwks.sign("k1", again, old_key)))
        assert (response.status_code, response.json()) == (401, {"detail": "invalid token"})

    async def test_unknown_kids_do_not_fetch_more_than_the_minimum_interval(
        self, jwks: Jwks
    ) -> None:
        app = jwks_app(jwks, **{"auth.jwks_min_refetch_s": 3600})
        stranger = ec.generate_private_key(ec.SECP256R1())
        async with running(app) as client:
            payload = claims()
            await store(app, payload)
            assert (
                await client.get("/bare", headers=bearer(jwks.sign("k1", payload)))
            ).status_code == 200
            for n in range(5):
                forged = jwks.sign(f"made-up-{n}", payload, stranger)
                assert (await client.get("/bare", headers=bearer(forged))).status_code == 401
        assert jwks.fetches == 1

    async def test_a_token_signed_by_a_key_not_in_the_jwks(self, jwks: Jwks) -> None:
        app = jwks_app(jwks)
        payload = claims()
        async with running(app) as client:
            await store(app, payload)
            forged = jwks.sign("k1", payload, ec.generate_private_key(ec.SECP256R1()))
            response = await client.get("/bare", headers=bearer(forged))
        assert (response.status_code, response.json()) == (401, {"detail": "invalid token"})

    async def test_jwks_down_is_503_then_recovers(self, jwks: Jwks) -> None:
        jwks.down = True
        app = jwks_app(jwks)
        payload = claims()
        async with running(app) as client:
            await store(app, payload)
            token = jwks.sign("k1", payload)
            response = await client.get("/bare", headers=bearer(token))
            assert (response.status_code, response.json()) == (
                503,
                {"detail": "token keys unavailable"},
            )
            jwks.down = False
            assert (await client.get("/bare", headers=bearer(token))).status_code == 200

    async def test_keys_held_survive_an_outage(self, jwks: Jwks) -> None:
        app = jwks_app(jwks)
        async with running(app) as client:
            payload = claims()
            await store(app, payload)
            token = jwks.sign("k1", payload)
            assert (await client.get("/bare", headers=bearer(token))).status_code == 200
            jwks.down = True
            unknown = jwks.sign("k9", payload, ec.generate_private_key(ec.SECP256R1()))
            assert (await client.get("/bare", headers=bearer(unknown))).status_code == 401
            assert jwks.fetches == 2  # tried, failed
            assert (await client.get("/bare", headers=bearer(token))).status_code == 200

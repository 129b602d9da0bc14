"""A minimal OpenID Connect provider on a loopback port, for signing in through ``st.login`` in tests.

Discovery, authorization-code flow (consent is automatic, for the email the test sets), PKCE S256,
an RS256 ID token with nonce, JWKS and userinfo: what Streamlit's Authlib client asks of a real
provider, nothing more. Never for production use.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlencode, urlparse

from joserfc import jwt
from joserfc.jwk import RSAKey

CLIENT_ID, CLIENT_SECRET = "pickloop-test", "pickloop-test-secret"


@dataclass
class Provider:
    url: str
    email: str = "eve@example.org"  # who "logs in" at the next authorization
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    codes: dict[str, dict] = field(default_factory=dict)
    logins: int = 0

    def metadata(self) -> dict:
        return {"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                "userinfo_endpoint": f"{self.url}/userinfo", "response_types_supported": ["code"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"], "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    def claims(self, nonce: str | None) -> dict:
        now = int(time.time())
        c = {"iss": self.url, "aud": CLIENT_ID, "sub": hashlib.sha256(self.email.encode()).hexdigest()[:16],
             "email": self.email, "email_verified": True, "name": self.email.split("@")[0], "iat": now,
             "exp": now + 600}
        if nonce:
            c["nonce"] = nonce
        return c


def _handler(p: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _json(self, body: dict, status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/.well-known/openid-configuration":
                return self._json(p.metadata())
            if url.path == "/jwks":
                return self._json({"keys": [p.key.as_dict(private=False)]})
            if url.path == "/userinfo":
                return self._json(p.claims(None))
            if url.path == "/authorize":
                if q.get("client_id") != CLIENT_ID:
                    return self._json({"error": "unauthorized_client"}, 400)
                code = secrets.token_urlsafe(16)
                p.codes[code] = {"nonce": q.get("nonce"), "challenge": q.get("code_challenge"),
                                 "redirect_uri": q["redirect_uri"]}
                p.logins += 1
                self.send_response(302)
                self.send_header("Location", f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}")
                self.end_headers()
                return None
            return self._json({"error": "not_found"}, 404)

        def do_POST(self) -> None:
            if urlparse(self.path).path != "/token":
                return self._json({"error": "not_found"}, 404)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            form = {k: v[0] for k, v in parse_qs(body).items()}
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            else:
                cid, secret = form.get("client_id"), form.get("client_secret")
            grant = p.codes.pop(form.get("code", ""), None)
            if (cid, secret) != (CLIENT_ID, CLIENT_SECRET) or grant is None:
                return self._json({"error": "invalid_grant"}, 400)
            if grant["challenge"]:
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if digest != grant["challenge"]:
                    return self._json({"error": "invalid_grant"}, 400)
            id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, p.claims(grant["nonce"]), p.key)
            return self._json({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                               "expires_in": 600, "id_token": id_token, "scope": "openid email profile"})

    return Handler


@contextlib.contextmanager
def oidc_provider() -> Iterator[Provider]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    provider = Provider(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


def write_secrets(folder, *, provider: Provider, app_port: int) -> None:
    """``.streamlit/secrets.toml`` in ``folder`` (the app's working directory) pointing ``st.login`` here."""
    d = folder / ".streamlit"
    d.mkdir(parents=True, exist_ok=True)
    (d / "secrets.toml").write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{app_port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        f'client_secret = "{CLIENT_SECRET}"\n'
        f'server_metadata_url = "{provider.url}/.well-known/openid-configuration"\n')

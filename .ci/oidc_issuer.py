#!/usr/bin/env python3
"""A stand-in OpenID Connect issuer for the CI scripts: what SSPM reads of a real identity
provider (the discovery document, the JWKS its `jwks_uri` names) and the OAuth 2.0 token
endpoint a client gets its token from (client credentials, RFC 6749 §4.4). Its RSA key is
generated at start; tokens are RS256 JWTs naming the client as `sub`.

As a program (used by .ci/python-client):

    python oidc_issuer.py --audience sspm --client percy@classics.example:secret --url-file F

writes its base URL to F and serves until killed. As a module (used by .ci/deploy_check.py):
`Issuer(...)`, `.url`, `.token(subject)`, `.stop()`. With --cert/--key it serves HTTPS.
"""

import argparse
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class Issuer:
    def __init__(self, audience, clients=None, host="127.0.0.1", name="127.0.0.1", certfile=None, keyfile=None):
        self.audience = audience
        self.clients = dict(clients or {})
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "ci-" + str(int(time.time()))
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    self.reply(200, {
                        "issuer": issuer.url,
                        "jwks_uri": issuer.url + "/keys",
                        "token_endpoint": issuer.url + "/token",
                        "grant_types_supported": ["client_credentials"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    })
                elif self.path == "/keys":
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()))
                    jwk.update({"kid": issuer.kid, "alg": "RS256", "use": "sig"})
                    self.reply(200, {"keys": [jwk]})
                else:
                    self.reply(404, {"error": "not_found"})

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                field = lambda k: form.get(k, [""])[0]  # noqa: E731
                if self.path != "/token" or field("grant_type") != "client_credentials":
                    self.reply(400, {"error": "unsupported_grant_type"})
                elif issuer.clients.get(field("client_id")) != field("client_secret"):
                    self.reply(401, {"error": "invalid_client"})
                else:
                    self.reply(200, {"access_token": issuer.token(field("client_id")), "token_type": "Bearer",
                                     "expires_in": 300})

        self.server = ThreadingHTTPServer((host, 0), Handler)
        scheme = "http"
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://{name}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, subject, ttl=300, **claims):
        now = int(time.time())
        body = {"iss": self.url, "aud": self.audience, "sub": subject, "iat": now, "exp": now + ttl, **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audience", required=True)
    parser.add_argument("--client", action="append", default=[], help="client_id:client_secret")
    parser.add_argument("--url-file", required=True)
    args = parser.parse_args()
    clients = dict(c.rsplit(":", 1) for c in args.client)
    issuer = Issuer(args.audience, clients)
    with open(args.url_file + ".tmp", "w") as f:
        f.write(issuer.url)
    os.replace(args.url_file + ".tmp", args.url_file)
    try:
        issuer.thread.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

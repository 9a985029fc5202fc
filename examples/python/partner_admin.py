#!/usr/bin/env python3
"""The partner administrator's scenario, from Python, with code generated from SSPM's protos.

Looks at a business unit's port limits, asks for a few more concurrent ports, follows the
request on the watch stream until it is final, and lists the business unit's requests.

    ./generate.sh
    # A token from your identity provider (OAuth 2.0 client credentials, the endpoint found
    # through the issuer's OpenID Connect discovery document):
    python partner_admin.py --issuer https://login.example.com/oauth2/default \
        --client-id "$CLIENT_ID" --client-secret "$CLIENT_SECRET" --scope sspm \
        --business-unit bu-league --increase 10
    # or any bearer token, e.g. a development token of `sspm up`:
    export SSPM_TOKEN=$(cargo run -q -- token percy@classics.example)
    python partner_admin.py --business-unit bu-league --increase 10
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402
from sspm.v1 import common_pb2 as common  # noqa: E402
from sspm.v1 import request_pb2 as pb  # noqa: E402
from sspm.v1 import request_pb2_grpc as rpc  # noqa: E402

State = pb.PortChangeRequestState


def provider_token(issuer: str, client_id: str, client_secret: str, scope: str | None) -> str:
    """An access token from the identity provider: its token endpoint is read from the
    issuer's discovery document, then asked with the client credentials grant."""
    with urllib.request.urlopen(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10) as r:
        token_endpoint = json.load(r)["token_endpoint"]
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
    if scope:
        form["scope"] = scope
    request = urllib.request.Request(token_endpoint, data=urllib.parse.urlencode(form).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)["access_token"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the request service")
    parser.add_argument("--token", default=os.environ.get("SSPM_TOKEN"), help="bearer token (or SSPM_TOKEN)")
    parser.add_argument("--issuer", help="the identity provider's issuer URL, to get a token from it")
    parser.add_argument("--client-id", default=os.environ.get("SSPM_CLIENT_ID"))
    parser.add_argument("--client-secret", default=os.environ.get("SSPM_CLIENT_SECRET"))
    parser.add_argument("--scope", help="scope to ask the provider for, if it needs one")
    parser.add_argument("--cacert", help="CA certificate (PEM) of a TLS deployment; plaintext without")
    parser.add_argument("--business-unit", default="bu-league")
    parser.add_argument("--increase", type=int, default=10, help="more concurrent ports to ask for")
    parser.add_argument("--request-id", default=f"py-{uuid.uuid4().hex[:12]}")
    args = parser.parse_args()
    if args.issuer:
        if not (args.client_id and args.client_secret):
            parser.error("--issuer needs --client-id and --client-secret (or SSPM_CLIENT_ID/SSPM_CLIENT_SECRET)")
        try:
            args.token = provider_token(args.issuer, args.client_id, args.client_secret, args.scope)
        except urllib.error.HTTPError as e:
            print(f"error: the identity provider refused the client credentials: HTTP {e.code}", file=sys.stderr)
            return 2
    if not args.token:
        parser.error("a token is needed: --issuer with client credentials, --token or SSPM_TOKEN")

    if args.cacert:
        with open(args.cacert, "rb") as f:
            channel = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.target)
    stub = rpc.PortRequestServiceStub(channel)
    auth = [("authorization", f"Bearer {args.token}")]

    try:
        limits = stub.GetPortLimits(pb.GetPortLimitsRequest(business_unit_id=args.business_unit), metadata=auth, timeout=10).limits
        print(f"limits of {args.business_unit}: concurrent {limits.concurrent}, outbound {limits.outbound}, agentless {limits.agentless}")

        created = stub.CreatePortChangeRequest(
            pb.CreatePortChangeRequestRequest(
                request_id=args.request_id,
                business_unit_id=args.business_unit,
                targets=common.PortTargets(concurrent=limits.concurrent + args.increase),
            ),
            metadata=auth,
            timeout=10,
        )
        print(f"created {created.request.request_id}: {pb.CreateOutcome.Name(created.outcome)}, case {created.request.case_number}")

        # The requester's notification: the request now and after every change, until final.
        for update in stub.WatchPortChangeRequest(
            pb.WatchPortChangeRequestRequest(request_id=args.request_id), metadata=auth, timeout=60
        ):
            print(f"watch: {State.Name(update.request.state)}")
        final = stub.GetPortChangeRequest(pb.GetPortChangeRequestRequest(request_id=args.request_id), metadata=auth, timeout=10).request
        print(f"final: {State.Name(final.state)}, limits after: concurrent {final.limits_after.concurrent}")

        page_token, listed = "", []
        while True:
            page = stub.ListPortChangeRequests(
                pb.ListPortChangeRequestsRequest(business_unit_id=args.business_unit, page_size=50, page_token=page_token),
                metadata=auth,
                timeout=10,
            )
            listed.extend(page.requests)
            page_token = page.next_page_token
            if not page_token:
                break
        for r in listed:
            print(f"listed: {r.request_id} {State.Name(r.state)} case {r.case_number}")
        return 0
    except grpc.RpcError as e:
        # SSPM's errors carry google.rpc details; the message names the rule or the field.
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The partner administrator's scenario, from Python, with code generated from SSPM's protos.

Looks at a business unit's port limits, asks for a few more concurrent ports, follows the
request on the watch stream until it is final, and lists the business unit's requests.

    ./generate.sh
    export SSPM_TOKEN=$(cargo run -q -- token percy@classics.example)
    python partner_admin.py --business-unit bu-league --increase 10
"""

import argparse
import os
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402
from sspm.v1 import common_pb2 as common  # noqa: E402
from sspm.v1 import request_pb2 as pb  # noqa: E402
from sspm.v1 import request_pb2_grpc as rpc  # noqa: E402

State = pb.PortChangeRequestState


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the request service")
    parser.add_argument("--token", default=os.environ.get("SSPM_TOKEN"), help="bearer token (or SSPM_TOKEN)")
    parser.add_argument("--cacert", help="CA certificate (PEM) of a TLS deployment; plaintext without")
    parser.add_argument("--business-unit", default="bu-league")
    parser.add_argument("--increase", type=int, default=10, help="more concurrent ports to ask for")
    parser.add_argument("--request-id", default=f"py-{uuid.uuid4().hex[:12]}")
    args = parser.parse_args()
    if not args.token:
        parser.error("a token is needed: --token or SSPM_TOKEN")

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

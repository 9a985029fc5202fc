"""Follows SSPM's port limits changes on NATS JetStream (README, "Events"); run by CI."""
import argparse, asyncio, os, sys
import nats
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from sspm.v1 import request_pb2  # noqa: E402  (./generate.sh makes it)

async def main(args):
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    # A durable consumer: it resumes after the last event acknowledged.
    sub = await js.pull_subscribe(args.subject, durable=args.durable)
    idle = 0
    while args.idle_exit == 0 or idle < args.idle_exit:
        try:
            msgs = await sub.fetch(10, timeout=1)
        except nats.errors.TimeoutError:
            idle += 1
            continue
        idle = 0
        for msg in msgs:
            change = request_pb2.PortLimitsChanged.FromString(msg.data)
            h = msg.headers
            cause = request_pb2.PortLimitsChangeCause.Name(change.cause)
            print(h["ce-subject"], h["ce-sequence"], change.before.concurrent, "->",
                  change.after.concurrent, cause, change.request_id, flush=True)
            # Apply it here; a redelivered event has the same ce-id (skip what you applied).
            await msg.ack()
    await nc.close()

p = argparse.ArgumentParser()
p.add_argument("--nats", default="nats://127.0.0.1:4222")
p.add_argument("--subject", default="sspm.events.port_limits.changed.>")
p.add_argument("--durable", default="media-servers")
p.add_argument("--idle-exit", type=int, default=0, help="stop after this many idle seconds (0: never)")
asyncio.run(main(p.parse_args()))

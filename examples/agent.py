"""A strategy agent in one page (aiomqtt): propose one bracket, follow its decision, order events
and fills, and once the entry has filled and the bid is --trigger of the way to the target, move
the stop to break-even with an `amend` command, and print the command's answer.

    python examples/agent.py --port 1883 --username demo --password "$PW" --price 230
    (env: MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD MQTT_PREFIX; one JSON line per event)
Exit 0: the amend was accepted; 1: rejected/invalid; 3: no answer in --timeout seconds.
"""
import argparse, asyncio, json, os, sys, uuid  # noqa: E401

import aiomqtt


async def main(a: argparse.Namespace) -> int:
    pid, cid = f"ex-{uuid.uuid4().hex[:10]}", f"be-{uuid.uuid4().hex[:10]}"
    tp = round(a.price * 1.02, 2)
    proposal = {"proposal_id": pid, "symbol": a.symbol, "side": "BUY", "quantity": a.qty,
                "order_type": "MKT", "take_profit": tp, "stop_loss": round(a.price * 0.99, 2)}
    top = f"{a.prefix}/{{}}/{a.agent}".format
    filled, entry, bid, amend = 0.0, None, None, None
    async with aiomqtt.Client(a.host, a.port, username=a.username, password=a.password) as mq:
        for t in (top("decisions"), top("orders"), f"{a.prefix}/portfolio"):
            await mq.subscribe(t, qos=1)       # before proposing: events may precede the decision
        await mq.publish(top("proposals"), json.dumps(proposal), qos=1)
        async with asyncio.timeout(a.timeout):
            async for msg in mq.messages:
                m, kind = json.loads(msg.payload), str(msg.topic).split("/")[-2:]
                if kind[-1] == "portfolio":    # the daemon's picture: quotes keyed by conId
                    bid = (m.get("quotes", {}).get(str(entry and entry["con_id"])) or {}).get("bid")
                elif m.get("proposal_id") != pid:
                    continue
                elif "command_id" in m:        # the answer to our command, not a decision
                    print(json.dumps({"event": "command_answer", **m}), flush=True)
                    return 0 if m["verdict"] == "accepted" else 1
                elif kind[0] == "decisions":
                    print(json.dumps({"event": "decision", **m}), flush=True)
                    if m["verdict"] != "approved":
                        return 1
                elif m.get("type") == "fill":
                    print(json.dumps({"event": "fill", **m}), flush=True)
                    if m["leg"] == "entry":
                        filled, entry = filled + m["quantity"], m
                else:
                    print(json.dumps({"event": "order", **m}), flush=True)
                if (amend is None and entry and filled >= a.qty and bid is not None
                        and bid >= entry["price"] + a.trigger * (tp - entry["price"])):
                    amend = {"command_id": cid, "action": "amend", "proposal_id": pid,
                             "stop_loss": round(entry["price"], 2)}     # break-even
                    await mq.publish(top("commands"), json.dumps(amend), qos=1)
                    print(json.dumps({"event": "amend_sent", "bid": bid, **amend}), flush=True)
    return 3


if __name__ == "__main__":
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default=env("MQTT_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(env("MQTT_PORT", "1883")))
    ap.add_argument("--username", default=env("MQTT_USERNAME"))
    ap.add_argument("--password", default=env("MQTT_PASSWORD"))
    ap.add_argument("--prefix", default=env("MQTT_PREFIX", "bracketgate"))
    ap.add_argument("--agent", default="demo", help="agent id (the login's name under an ACL)")
    ap.add_argument("--symbol", default="AAPL")
    ap.add_argument("--qty", type=int, default=1)
    ap.add_argument("--price", type=float, required=True, help="your reference price for it")
    ap.add_argument("--trigger", type=float, default=0.5,
                    help="move the stop once the bid is this fraction of the way to the target")
    ap.add_argument("--timeout", type=float, default=120.0)
    try:
        sys.exit(asyncio.run(main(ap.parse_args())))
    except TimeoutError:
        print(json.dumps({"event": "timeout"}), flush=True)
        sys.exit(3)

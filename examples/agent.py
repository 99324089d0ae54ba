"""A strategy agent in one page (aiomqtt): propose one bracket, follow its decision, order events
and fills, and once the entry has filled move the stop to break-even with an `amend` command.

    python examples/agent.py --port 1883 --username demo --password "$PW" --price 230
    (env: MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD MQTT_PREFIX; one JSON line per event)
Exit 0: the amend was accepted; 1: rejected/invalid; 3: no answer in --timeout seconds.
"""
import argparse, asyncio, json, os, sys, uuid  # noqa: E401

import aiomqtt


async def main(a: argparse.Namespace) -> int:
    pid, cid = f"ex-{uuid.uuid4().hex[:10]}", f"be-{uuid.uuid4().hex[:10]}"
    proposal = {"proposal_id": pid, "symbol": a.symbol, "side": "BUY", "quantity": a.qty,
                "order_type": "MKT", "take_profit": round(a.price * 1.02, 2),
                "stop_loss": round(a.price * 0.99, 2)}
    top = f"{a.prefix}/{{}}/{a.agent}".format
    filled = 0.0
    async with aiomqtt.Client(a.host, a.port, username=a.username, password=a.password) as mq:
        await mq.subscribe(top("decisions"), qos=1)   # subscribed before proposing:
        await mq.subscribe(top("orders"), qos=1)      # order events may come before the decision
        await mq.publish(top("proposals"), json.dumps(proposal), qos=1)
        async with asyncio.timeout(a.timeout):
            async for msg in mq.messages:
                m = json.loads(msg.payload)
                if m.get("proposal_id") != pid:
                    continue
                if "command_id" in m:            # the answer to our command, not a decision
                    print(json.dumps({"event": "command_answer", **m}), flush=True)
                    return 0 if m["verdict"] == "accepted" else 1
                if str(msg.topic).split("/")[-2] == "decisions":
                    print(json.dumps({"event": "decision", **m}), flush=True)
                    if m["verdict"] != "approved":
                        return 1
                elif m.get("type") == "fill":
                    print(json.dumps({"event": "fill", **m}), flush=True)
                    if m["leg"] == "entry":
                        filled += m["quantity"]
                        if filled >= a.qty:      # entry done: stop to break-even
                            amend = {"command_id": cid, "action": "amend", "proposal_id": pid,
                                     "stop_loss": round(m["price"], 2)}
                            await mq.publish(top("commands"), json.dumps(amend), qos=1)
                            print(json.dumps({"event": "amend_sent", **amend}), flush=True)
                else:
                    print(json.dumps({"event": "order", **m}), flush=True)
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
    ap.add_argument("--timeout", type=float, default=60.0)
    try:
        sys.exit(asyncio.run(main(ap.parse_args())))
    except TimeoutError:
        print(json.dumps({"event": "timeout"}), flush=True)
        sys.exit(3)

"""An independent MQTT 3.1.1 client (paho-mqtt) for the broker tests, over WebSocket or TCP.

Prints one line per event, flushed at once:
  CONNACK <code>               the broker's answer to CONNECT (0 = accepted)
  SUBACK <code>,<code>...      granted QoS per filter, 128 = refused
  MSG <retain> <qos> <topic> <payload>
  UNSUBACK                     the --unsubscribe filters were removed (sent after SUBACK)
  PUBLISHED <mid>              a --publish was acknowledged as its QoS requires
Exits 1 when the connection is refused or lost, and 0 after --count messages.
"""

import argparse
import sys

import paho.mqtt.client as mqtt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--transport", choices=["websockets", "tcp"], default="websockets")
    ap.add_argument("--path", default="/mqtt")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--subscribe", action="append", default=[])
    ap.add_argument("--unsubscribe", action="append", default=[], help="after SUBACK")
    ap.add_argument("--publish", action="append", default=[], help="TOPIC=PAYLOAD, after SUBACK")
    ap.add_argument("--qos", type=int, default=1)
    ap.add_argument("--keepalive", type=int, default=30)
    ap.add_argument("--will", help="TOPIC=PAYLOAD, QoS 1")
    ap.add_argument("--count", type=int, default=0, help="exit after this many messages")
    ap.add_argument("--client-id", default="")
    ap.add_argument("--retain", action="store_true", help="publish with the retain flag")
    ap.add_argument("--disconnect-after-publish", action="store_true",
                    help="send DISCONNECT once every --publish is acknowledged, then exit")
    args = ap.parse_args()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        transport=args.transport,
        protocol=mqtt.MQTTv311,
    )
    if args.transport == "websockets":
        client.ws_set_options(path=args.path)
    if args.will:
        topic, _, payload = args.will.partition("=")
        client.will_set(topic, payload, qos=1)
    if args.user is not None:
        client.username_pw_set(args.user, args.password)
    state = {"received": 0, "rc": 0, "published": 0}

    def say(line: str) -> None:
        print(line, flush=True)

    def on_connect(c, _userdata, _flags, reason_code, _props):
        say(f"CONNACK {reason_code.value}")
        if reason_code.is_failure:
            state["rc"] = 1
            c.disconnect()
            return
        if args.subscribe:
            c.subscribe([(t, args.qos) for t in args.subscribe])
        else:
            publish(c)

    def publish(c):
        for item in args.publish:
            topic, _, payload = item.partition("=")
            c.publish(topic, payload, qos=args.qos, retain=args.retain)

    def on_subscribe(c, _userdata, _mid, codes, _props):
        say("SUBACK " + ",".join(str(code.value) for code in codes))
        if args.unsubscribe:
            c.unsubscribe(args.unsubscribe)
        else:
            publish(c)

    def on_unsubscribe(c, _userdata, _mid, _codes, _props):
        say("UNSUBACK")
        publish(c)

    def on_publish(c, _userdata, mid, _reason, _props):
        say(f"PUBLISHED {mid}")
        state["published"] += 1
        if args.disconnect_after_publish and state["published"] >= len(args.publish):
            c.disconnect()

    def on_message(c, _userdata, msg):
        payload = msg.payload.decode("utf-8", "replace")
        say(f"MSG {int(msg.retain)} {msg.qos} {msg.topic} {payload}")
        state["received"] += 1
        if args.count and state["received"] >= args.count:
            c.disconnect()

    def on_disconnect(_c, _userdata, _flags, reason_code, _props):
        if reason_code.is_failure and not (args.count and state["received"] >= args.count):
            state["rc"] = 1
        say(f"DISCONNECTED {reason_code.value}")

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_unsubscribe = on_unsubscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    try:
        client.connect("127.0.0.1", args.port, keepalive=args.keepalive)
    except OSError as e:
        say(f"ERROR {e}")
        return 1
    client.loop_forever(retry_first_connection=False)
    return state["rc"]


if __name__ == "__main__":
    sys.exit(main())

"""Publishes a burst of numbered messages (paho-mqtt, MQTT 3.1.1) as fast as the broker
acknowledges them, and waits for every acknowledgement.

  qos_burst.py --port P --topic T --count N [--qos 1] [--inflight 20] [--pad 100]

Payload of message i: {"seq": i, "pad": "xxx..."}. Prints `ACKED <n> <seconds>` once every
message was acknowledged (PUBACK for QoS 1, PUBCOMP for QoS 2) and exits 0; exits 1 on a
refused or lost connection or after --timeout seconds.
At most --window messages are handed to paho and not yet acknowledged: more than 65,535
queued would wrap paho's message ids.
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--qos", type=int, default=1, choices=[0, 1, 2])
    ap.add_argument("--inflight", type=int, default=20)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--pad", type=int, default=100)
    ap.add_argument("--client-id", default="burst-pub")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()

    acked = [0]
    failed = threading.Event()
    connected = threading.Event()
    done = threading.Event()
    window = threading.BoundedSemaphore(a.window)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=a.client_id,
                    clean_session=True, protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(a.inflight)
    c.max_queued_messages_set(0)

    def on_connect(cl, ud, flags, rc, props=None):
        if rc != 0:
            print(f"CONNACK {rc}", flush=True)
            failed.set()
        connected.set()

    def on_publish(cl, ud, mid, rc=None, props=None):
        acked[0] += 1
        window.release()
        if acked[0] >= a.count:
            done.set()

    def on_disconnect(cl, ud, flags, rc=None, props=None):
        if not done.is_set():
            print("DISCONNECTED", flush=True)
            failed.set()
            done.set()

    c.on_connect = on_connect
    c.on_publish = on_publish
    c.on_disconnect = on_disconnect
    c.connect("127.0.0.1", a.port, keepalive=60)
    c.loop_start()
    if not connected.wait(10) or failed.is_set():
        return 1
    pad = "x" * a.pad
    started = time.monotonic()
    for i in range(a.count):
        if failed.is_set():
            return 1
        window.acquire()
        c.publish(a.topic, json.dumps({"seq": i, "pad": pad}, separators=(",", ":")), qos=a.qos)
    if not done.wait(a.timeout) or failed.is_set():
        print(f"TIMEOUT acked {acked[0]} of {a.count}", flush=True)
        return 1
    print(f"ACKED {acked[0]} {time.monotonic() - started:.3f}", flush=True)
    # No DISCONNECT on purpose: the test decides how the session ends (kill -9 of the gateway,
    # or this process exiting).
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MQTT sessions with paho-mqtt, the Python client, at its default settings.

Usage: paho_mqtt.py SCENARIO HOST PORT VERSION ARGS...
  VERSION is 3 (MQTT 3.1.1) or 5, followed by "ws" for MQTT over WebSocket
  (PORT is then the HTTP port, path /mqtt). Each scenario prints one JSON
  value.

  pubsub BASE     a subscriber of BASE/+/temp at QoS 2; a second client
                  publishes "q0", "q1", "q2" to BASE/room1/temp at QoS 0, 1
                  and 2 (v5: "q1" with the user property k=v, "q2" with a
                  content type, response topic and correlation data), each
                  waited for; prints what the subscriber got, in order.
  retained BASE   BASE/a retained "21.5"; BASE/b retained "x", then cleared
                  (an empty retained message); then a subscriber of BASE/+
                  and, once subscribed, "live" published to BASE/a; prints
                  what the subscriber got, in order, with retain flags.
  v5options BASE (MQTT 5 only) client A subscribes BASE/# with No Local,
                  Retain As Published and subscription identifier 7; client
                  C subscribes BASE/# plainly. A publishes "mine" to BASE/x,
                  then B publishes "kept" (retained) to BASE/y and "marker"
                  to BASE/x; A publishes "aliased1" to BASE/z setting topic
                  alias 1, then "aliased2" by the alias alone. Prints what
                  A got up to the marker and what C got up to "aliased2".
  expiry TOPIC CLIENT (MQTT 5) CLIENT keeps a session for 1 s, subscribes
                  TOPIC and leaves; 3 s later it connects again: prints
                  whether the session was still present.
  willdelay TOPIC CLIENT (MQTT 5) a subscriber of TOPIC; CLIENT-1 (will
                  "late", delay 1 s) and CLIENT-2 (will "cancelled", delay
                  3 s) lose their connections, both keeping a session;
                  CLIENT-2 comes back at once. Once "late" arrived and 4 s
                  passed, "marker" is published; prints what the
                  subscriber got up to it and how long "late" took.
  slow TOPIC COUNT a subscriber of TOPIC taking 2 ms over each message;
                  a publisher sends m0..m(COUNT-1) at QoS 1 as fast as it
                  can (all in flight at once); prints how many distinct
                  messages the subscriber got and whether in order.
  session TOPIC CLIENT
                  CLIENT keeps a session (3.1.1 clean session off, 5 session
                  expiry 300 s), subscribes TOPIC at QoS 1 and disconnects;
                  another client publishes m0..m4 at QoS 1; CLIENT connects
                  again and subscribes nothing; prints the session present
                  flags and the payloads it got.
  will TOPIC      a client with a will ("gone") loses its connection; one
                  with a will ("kept") disconnects cleanly; then "marker" is
                  published; prints the payloads a subscriber of TOPIC got
                  up to the marker.
  takeover CLIENT two connections with one client id: prints the reason
                  code the first is disconnected with.
  receive TOPIC COUNT
                  subscribes TOPIC at QoS 1, prints "subscribed" on a line,
                  then the first COUNT messages as JSON.
  login TOPIC USER PASSWORD
                  connects with these credentials ("-": none); prints the
                  CONNACK reason code (paho reports 3.1.1's return codes as
                  MQTT 5 reason codes) and, when accepted, whether a QoS 1
                  publish to TOPIC was acknowledged.
  quota BASE N   (MQTT 5) subscribes BASE/0 .. BASE/(N-1) at QoS 1 in one
                  SUBSCRIBE; prints the SUBACK codes and what a publish to
                  BASE/0 brought.
  publish TOPIC COUNT
                  publishes m0..m(COUNT-1) at QoS 1, each waited for.
"""

import json
import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 30


def client(version, client_id="", clean=True, manual_ack=False):
    transport = "websockets" if version.endswith("ws") else "tcp"
    if version.startswith("5"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5, transport=transport, manual_ack=manual_ack)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, clean_session=clean, transport=transport,
                        manual_ack=manual_ack)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    c.connected = queue.Queue()
    c.messages = queue.Queue()
    c.disconnected = queue.Queue()
    c.subscribed = queue.Queue()
    c.on_connect = lambda c_, u, flags, rc, p: c.connected.put((flags.session_present, rc.value))
    c.on_message = lambda c_, u, m: c.messages.put(m)
    c.on_disconnect = lambda c_, u, flags, rc, p: c.disconnected.put(rc.value)
    c.on_subscribe = lambda c_, u, mid, rcs, p: c.subscribed.put([r.value for r in rcs])
    return c


def connect(c, host, port, version, clean=True, expiry=0, keepalive=60):
    if version.startswith("5"):
        props = Properties(PacketTypes.CONNECT)
        if expiry:
            props.SessionExpiryInterval = expiry
        c.connect(host, port, keepalive=keepalive, clean_start=clean, properties=props)
    else:
        c.connect(host, port, keepalive=keepalive)
    c.loop_start()
    present, rc = c.connected.get(timeout=WAIT)
    if rc != 0:
        raise SystemExit("CONNACK refused: %s" % rc)
    return present


def subscribe(c, topic, qos):
    c.subscribe(topic, qos)
    codes = c.subscribed.get(timeout=WAIT)
    if any(code >= 0x80 for code in codes):
        raise SystemExit("SUBACK refused %s: %s" % (topic, codes))


def publish(c, topic, payload, qos, properties=None):
    info = c.publish(topic, payload, qos=qos, properties=properties)
    info.wait_for_publish(WAIT)
    if not info.is_published():
        raise SystemExit("not acknowledged: %s" % payload)


def describe(m):
    props = []
    out = {"topic": m.topic, "payload": m.payload.decode(), "qos": m.qos, "retain": m.retain}
    if m.properties is not None:
        if hasattr(m.properties, "UserProperty"):
            props = [list(p) for p in m.properties.UserProperty]
        for name in ("ContentType", "ResponseTopic"):
            if hasattr(m.properties, name):
                out[name] = getattr(m.properties, name)
        if hasattr(m.properties, "CorrelationData"):
            out["CorrelationData"] = m.properties.CorrelationData.hex()
        if hasattr(m.properties, "SubscriptionIdentifier"):
            out["SubscriptionIdentifier"] = m.properties.SubscriptionIdentifier
    out["props"] = props
    return out


def stop(c):
    c.disconnect()
    c.loop_stop()


def pubsub(host, port, version, base):
    sub = client(version)
    connect(sub, host, port, version)
    subscribe(sub, base + "/+/temp", 2)
    pub = client(version)
    connect(pub, host, port, version)
    for qos in (0, 1, 2):
        props = None
        if version.startswith("5") and qos == 1:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("k", "v")
        if version.startswith("5") and qos == 2:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "text/plain"
            props.ResponseTopic = "replies/1"
            props.CorrelationData = b"\x01\xfe"
        publish(pub, base + "/room1/temp", "q%d" % qos, qos, props)
    got = [describe(sub.messages.get(timeout=WAIT)) for _ in range(3)]
    stop(pub)
    stop(sub)
    return got


def retained(host, port, version, base):
    pub = client(version)
    connect(pub, host, port, version)
    info = pub.publish(base + "/a", "21.5", qos=1, retain=True)
    info.wait_for_publish(WAIT)
    for payload in ("x", ""):
        info = pub.publish(base + "/b", payload, qos=1, retain=True)
        info.wait_for_publish(WAIT)
    sub = client(version)
    connect(sub, host, port, version)
    subscribe(sub, base + "/+", 1)
    publish(pub, base + "/a", "live", 1)
    got = [describe(sub.messages.get(timeout=WAIT))]
    while got[-1]["payload"] != "live":
        got.append(describe(sub.messages.get(timeout=WAIT)))
    stop(pub)
    stop(sub)
    return [{"payload": m["payload"], "retain": m["retain"]} for m in got]


def v5options(host, port, version, base):
    from paho.mqtt.subscribeoptions import SubscribeOptions
    a = client(version)
    connect(a, host, port, version)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 7
    a.subscribe(base + "/#", options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True),
                properties=props)
    a.subscribed.get(timeout=WAIT)
    c = client(version)
    connect(c, host, port, version)
    subscribe(c, base + "/#", 1)
    b = client(version)
    connect(b, host, port, version)
    publish(a, base + "/x", "mine", 1)
    info = b.publish(base + "/y", "kept", qos=1, retain=True)
    info.wait_for_publish(WAIT)
    publish(b, base + "/x", "marker", 1)
    alias = Properties(PacketTypes.PUBLISH)
    alias.TopicAlias = 1
    publish(a, base + "/z", "aliased1", 1, alias)
    publish(a, "", "aliased2", 1, alias)

    def until(sub, *payloads):
        got = []
        while not all(p in [m["payload"] for m in got] for p in payloads):
            got.append(describe(sub.messages.get(timeout=WAIT)))
        return got

    a_got = until(a, "kept", "marker")
    c_got = until(c, "aliased2")
    for x in (a, b, c):
        stop(x)
    return {"a": a_got, "c": c_got}


def expiry(host, port, version, topic, client_id):
    keeper = client(version, client_id)
    connect(keeper, host, port, version, clean=True, expiry=1)
    subscribe(keeper, topic, 1)
    stop(keeper)
    time.sleep(3)
    back = client(version, client_id)
    present = connect(back, host, port, version, clean=False, expiry=1)
    stop(back)
    return {"present": present}


def endnow(host, port, version, topic, client_id):
    """A session of an hour, left with a plain DISCONNECT, then with one
    setting its expiry to 0 (MQTT 5), each time connecting again at once:
    whether it was there the second time, and the third. The second time
    the DISCONNECT follows a SUBSCRIBE of 30 filters, not waited for: the
    gateway is still subscribing them when the client is back."""

    def leave(expiry_at_disconnect):
        c = client(version, client_id)
        present = connect(c, host, port, version, clean=False, expiry=3600)
        if expiry_at_disconnect is None:
            subscribe(c, topic, 1)
        else:
            c.subscribe([("%s/%d" % (topic, i), 1) for i in range(30)])
        props = Properties(PacketTypes.DISCONNECT)
        if expiry_at_disconnect is not None:
            props.SessionExpiryInterval = expiry_at_disconnect
        c.disconnect(properties=props)
        c.loop_stop()
        return present
    leave(None)
    kept = leave(0)
    back = client(version, client_id)
    present = connect(back, host, port, version, clean=False, expiry=3600)
    stop(back)
    return {"kept": kept, "present": present}


def away(host, port, version, topic, client_id, expiry):
    """A session of `expiry` seconds subscribed to `topic`, whose client
    then leaves."""
    keeper = client(version, client_id)
    connect(keeper, host, port, version, clean=True, expiry=int(expiry))
    subscribe(keeper, topic, 1)
    stop(keeper)
    return {"left": True}


def leave(host, port, version, topic, client_id, delay):
    """A session whose client leaves without DISCONNECT, with a retained
    will "gone" to `topic` delayed by `delay` seconds."""
    c = client(version, client_id)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = int(delay)
    c.will_set(topic, "gone", qos=1, retain=True, properties=props)
    connect(c, host, port, version, clean=True, expiry=60)
    # The network thread stopped first, so that it sends no DISCONNECT;
    # then the socket closes under it.
    c.loop_stop()
    c.socket().close()
    return {"left": True}


def willdelay(host, port, version, topic, client_id):
    sub = client(version)
    connect(sub, host, port, version)
    subscribe(sub, topic, 1)

    def with_will(name, payload, delay):
        c = client(version, name)
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = delay
        c.will_set(topic, payload, qos=1, properties=props)
        connect(c, host, port, version, clean=True, expiry=30)
        return c

    late = with_will(client_id + "-1", "late", 1)
    cancelled = with_will(client_id + "-2", "cancelled", 3)
    # Before loop_stop: its network thread closes the socket as it ends.
    lost = time.time()
    for c in (late, cancelled):
        c.loop_stop()
        c.socket().close()
    back = client(version, client_id + "-2")
    connect(back, host, port, version, clean=False, expiry=30)
    got = [sub.messages.get(timeout=WAIT).payload.decode()]
    took = time.time() - lost
    # Past the cancelled will's delay, counted from its connection's end.
    time.sleep(4)
    pub = client(version)
    connect(pub, host, port, version)
    publish(pub, topic, "marker", 1)
    while got[-1] != "marker":
        got.append(sub.messages.get(timeout=WAIT).payload.decode())
    for c in (pub, back, sub):
        stop(c)
    return {"got": got, "late_after": took}


def slow(host, port, version, topic, count):
    count = int(count)
    sub = client(version)
    got = []

    def on_message(c, userdata, m):
        time.sleep(0.002)
        got.append(m.payload.decode())
        if len(set(got)) == count:
            sub.messages.put(None)

    sub.on_message = on_message
    connect(sub, host, port, version)
    subscribe(sub, topic, 1)
    pub = client(version)
    pub.max_queued_messages_set(0)
    pub.max_inflight_messages_set(count)
    connect(pub, host, port, version)
    infos = [pub.publish(topic, "m%d" % i, qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(WAIT)
    stop(pub)
    sub.messages.get(timeout=WAIT + count * 0.01)
    stop(sub)
    first = []
    for p in got:
        if p not in first:
            first.append(p)
    return {"distinct": len(set(got)), "in_order": first == ["m%d" % i for i in range(count)]}


def session(host, port, version, topic, client_id):
    keeper = client(version, client_id, clean=False)
    first = connect(keeper, host, port, version, clean=False, expiry=300)
    subscribe(keeper, topic, 1)
    stop(keeper)
    pub = client(version)
    connect(pub, host, port, version)
    for i in range(5):
        publish(pub, topic, "m%d" % i, 1)
    stop(pub)
    back = client(version, client_id, clean=False)
    second = connect(back, host, port, version, clean=False, expiry=300)
    got = [back.messages.get(timeout=WAIT).payload.decode() for _ in range(5)]
    stop(back)
    # A clean start ends the session: nothing of it remains.
    gone = client(version, client_id, clean=True)
    third = connect(gone, host, port, version, clean=True)
    stop(gone)
    return {"present": [first, second, third], "payloads": got}


def will(host, port, version, topic):
    sub = client(version)
    connect(sub, host, port, version)
    subscribe(sub, topic, 1)
    lost = client(version)
    lost.will_set(topic, "gone", qos=1)
    connect(lost, host, port, version)
    lost.loop_stop()
    lost.socket().close()
    got = [sub.messages.get(timeout=WAIT).payload.decode()]
    clean = client(version)
    clean.will_set(topic, "kept", qos=1)
    connect(clean, host, port, version)
    stop(clean)
    clean.disconnected.get(timeout=WAIT)
    pub = client(version)
    connect(pub, host, port, version)
    publish(pub, topic, "marker", 1)
    stop(pub)
    while got[-1] != "marker":
        got.append(sub.messages.get(timeout=WAIT).payload.decode())
    stop(sub)
    return got


def keepalive(host, port, version, topic):
    """Two clients with a 1 s keep-alive: one goes silent (its network
    loop stopped, its socket left open), the other keeps pinging. The
    silent one's will comes 1.5 s after it was last heard; the other is
    still connected at twice that and publishes."""
    sub = client(version)
    connect(sub, host, port, version)
    subscribe(sub, topic, 1)
    pinging = client(version)
    connect(pinging, host, port, version, keepalive=1)
    silent = client(version)
    silent.will_set(topic, "silent", qos=1)
    heard = time.time()
    connect(silent, host, port, version, keepalive=1)
    silent.loop_stop()
    will = sub.messages.get(timeout=WAIT).payload.decode()
    will_after = time.time() - heard
    # The time is what is tested: twice the limit the silent one was given.
    time.sleep(max(0.0, 3.0 - (time.time() - heard)))
    publish(pinging, topic, "pinging", 1)
    then = sub.messages.get(timeout=WAIT).payload.decode()
    still = pinging.disconnected.empty()
    for c in (pinging, sub):
        stop(c)
    return {"will": will, "will_after": will_after, "then": then, "still_connected": still}


def redeliver(host, port, version, topic, client_id):
    """A persistent session's subscriber gets two QoS 1 messages,
    acknowledges the first only (manual acks) and loses its connection;
    connected again, it gets the second again. Returns [payload, packet
    id, dup] of both deliveries of the second."""
    def session():
        c = client(version, client_id, clean=False, manual_ack=True)
        connect(c, host, port, version, clean=False, expiry=300)
        return c
    sub = session()
    subscribe(sub, topic, 1)
    pub = client(version)
    connect(pub, host, port, version)
    # The first is acknowledged, so the second's packet id is not the one
    # a new connection would give first.
    publish(pub, topic, "before", 1)
    publish(pub, topic, "again", 1)
    stop(pub)
    before = sub.messages.get(timeout=WAIT)
    sub.ack(before.mid, before.qos)
    first = sub.messages.get(timeout=WAIT)
    sub.loop_stop()
    sub.socket().close()
    back = session()
    # "before" may come again too: its PUBACK, queued by ack(), may not
    # have been written when the connection was cut.
    again = back.messages.get(timeout=WAIT)
    while again.payload != b"again":
        back.ack(again.mid, again.qos)
        again = back.messages.get(timeout=WAIT)
    back.ack(again.mid, again.qos)
    # Forget the session.
    back.disconnect()
    back.loop_stop()
    gone = client(version, client_id, clean=True)
    connect(gone, host, port, version, clean=True)
    stop(gone)
    return [[m.payload.decode(), m.mid, bool(m.dup)] for m in (first, again)]


def takeover(host, port, version, client_id):
    first = client(version, client_id)
    connect(first, host, port, version)
    second = client(version, client_id)
    connect(second, host, port, version)
    reason = first.disconnected.get(timeout=WAIT)
    first.loop_stop()
    stop(second)
    return {"first_disconnected": reason}


def receive(host, port, version, topic, count):
    sub = client(version)
    connect(sub, host, port, version)
    subscribe(sub, topic, 1)
    print("subscribed", flush=True)
    got = [describe(sub.messages.get(timeout=WAIT)) for _ in range(int(count))]
    stop(sub)
    return got


def publish_many(host, port, version, topic, count):
    pub = client(version)
    connect(pub, host, port, version)
    for i in range(int(count)):
        publish(pub, topic, "m%d" % i, 1)
    stop(pub)
    return int(count)


def login(host, port, version, topic, user, password):
    c = client(version)
    if user != "-" or password != "-":
        c.username_pw_set(None if user == "-" else user, None if password == "-" else password)
    if version.startswith("5"):
        c.connect(host, port, properties=Properties(PacketTypes.CONNECT))
    else:
        c.connect(host, port)
    c.loop_start()
    present, rc = c.connected.get(timeout=WAIT)
    out = {"connack": rc}
    if rc == 0:
        info = c.publish(topic, "hello", qos=1)
        info.wait_for_publish(WAIT)
        out["published"] = info.is_published()
        c.disconnect()
    c.loop_stop()
    return out


def quota(host, port, version, base, n):
    sub = client(version)
    connect(sub, host, port, version)
    sub.subscribe([(base + "/%d" % i, 1) for i in range(int(n))])
    codes = sub.subscribed.get(timeout=WAIT)
    pub = client(version)
    connect(pub, host, port, version)
    publish(pub, base + "/0", "hello", 1)
    received = sub.messages.get(timeout=WAIT).payload.decode()
    stop(pub)
    stop(sub)
    return {"codes": codes, "received": received}


SCENARIOS = {
    "pubsub": pubsub,
    "session": session,
    "retained": retained,
    "slow": slow,
    "expiry": expiry,
    "away": away,
    "endnow": endnow,
    "leave": leave,
    "willdelay": willdelay,
    "v5options": v5options,
    "will": will,
    "takeover": takeover,
    "keepalive": keepalive,
    "redeliver": redeliver,
    "receive": receive,
    "publish": publish_many,
    "login": login,
    "quota": quota,
}

if __name__ == "__main__":
    scenario, host, port, version = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    started = time.time()
    print(json.dumps(SCENARIOS[scenario](host, port, version, *sys.argv[5:])), flush=True)

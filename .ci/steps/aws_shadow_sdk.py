"""The AWS IoT Device SDK v2 for Python against iot-aws-bridge through a local broker.

Run by .ci/steps/aws.sh: `python aws_shadow_sdk.py --port PORT`. Exits non-zero on the
first failed check; every wait is bounded.
"""

import argparse
import queue
import sys
import uuid

from awscrt import io, mqtt
from awsiot import iotshadow

TIMEOUT_S = 10
QOS = mqtt.QoS.AT_LEAST_ONCE
checks = 0


def check(condition, what):
    global checks
    if not condition:
        raise AssertionError(what)
    checks += 1


class Shadow:
    """One shadow (classic when `name` is None) and queues of everything it receives."""

    def __init__(self, client, thing, name):
        self.client, self.thing, self.name = client, thing, name
        self.queues = {}
        named = name is not None
        kw = {"thing_name": thing}
        if named:
            kw["shadow_name"] = name
        subs = [
            ("get_ok", "get_named_shadow_accepted" if named else "get_shadow_accepted",
             iotshadow.GetNamedShadowSubscriptionRequest if named else iotshadow.GetShadowSubscriptionRequest),
            ("get_err", "get_named_shadow_rejected" if named else "get_shadow_rejected",
             iotshadow.GetNamedShadowSubscriptionRequest if named else iotshadow.GetShadowSubscriptionRequest),
            ("update_ok", "update_named_shadow_accepted" if named else "update_shadow_accepted",
             iotshadow.UpdateNamedShadowSubscriptionRequest if named else iotshadow.UpdateShadowSubscriptionRequest),
            ("update_err", "update_named_shadow_rejected" if named else "update_shadow_rejected",
             iotshadow.UpdateNamedShadowSubscriptionRequest if named else iotshadow.UpdateShadowSubscriptionRequest),
            ("delete_ok", "delete_named_shadow_accepted" if named else "delete_shadow_accepted",
             iotshadow.DeleteNamedShadowSubscriptionRequest if named else iotshadow.DeleteShadowSubscriptionRequest),
            ("delete_err", "delete_named_shadow_rejected" if named else "delete_shadow_rejected",
             iotshadow.DeleteNamedShadowSubscriptionRequest if named else iotshadow.DeleteShadowSubscriptionRequest),
            ("delta", "named_shadow_delta_updated_events" if named else "shadow_delta_updated_events",
             iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest if named else iotshadow.ShadowDeltaUpdatedSubscriptionRequest),
            ("documents", "named_shadow_updated_events" if named else "shadow_updated_events",
             iotshadow.NamedShadowUpdatedSubscriptionRequest if named else iotshadow.ShadowUpdatedSubscriptionRequest),
        ]
        for key, method, request in subs:
            q = queue.Queue()
            self.queues[key] = q
            subscribe = getattr(client, "subscribe_to_" + method)
            future, _ = subscribe(request(**kw), QOS, q.put)
            future.result(TIMEOUT_S)
        self.kw = kw

    def expect(self, key):
        try:
            return self.queues[key].get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"{self.label()}: no message on {key} within {TIMEOUT_S} s")

    def quiet(self, key):
        """Nothing arrived on `key` (checked after a later answer proved the order)."""
        return self.queues[key].empty()

    def label(self):
        return self.thing if self.name is None else f"{self.thing}/{self.name}"

    def _publish(self, op, request_cls, named_cls, **fields):
        named = self.name is not None
        cls = named_cls if named else request_cls
        method = getattr(self.client, f"publish_{op}_named_shadow" if named else f"publish_{op}_shadow")
        method(cls(**self.kw, **fields), QOS).result(TIMEOUT_S)

    def get(self, token):
        self._publish("get", iotshadow.GetShadowRequest, iotshadow.GetNamedShadowRequest,
                      client_token=token)

    def update(self, state, token, version=None):
        self._publish("update", iotshadow.UpdateShadowRequest, iotshadow.UpdateNamedShadowRequest,
                      state=state, client_token=token, version=version)

    def delete(self, token):
        self._publish("delete", iotshadow.DeleteShadowRequest, iotshadow.DeleteNamedShadowRequest,
                      client_token=token)


def scenario(s):
    who = s.label()
    # A shadow that does not exist answers 404.
    s.get("g0")
    err = s.expect("get_err")
    check(err.code == 404 and err.client_token == "g0", f"{who}: GET before create is 404: {err.code}")

    # The application sets desired: accepted echoes only the request, a delta follows.
    s.update(iotshadow.ShadowState(desired={"color": "red", "level": {"min": 1, "max": 9}}), "u1")
    ok = s.expect("update_ok")
    check(ok.version == 1 and ok.client_token == "u1", f"{who}: first update is version 1")
    check(ok.state.desired == {"color": "red", "level": {"min": 1, "max": 9}}, f"{who}: accepted state")
    check(ok.metadata.desired["color"]["timestamp"] is not None, f"{who}: accepted metadata")
    delta = s.expect("delta")
    check(delta.state == {"color": "red", "level": {"min": 1, "max": 9}} and delta.version == 1,
          f"{who}: delta after desired: {delta.state}")
    docs = s.expect("documents")
    check(docs.previous is None and docs.current.version == 1
          and docs.current.state.desired["color"] == "red", f"{who}: documents of a new shadow")

    # The device reports something else: desired stays, the delta stays.
    s.update(iotshadow.ShadowState(reported={"color": "blue", "level": {"min": 1, "max": 9}}), "u2")
    ok = s.expect("update_ok")
    check(ok.version == 2 and ok.state.desired is None, f"{who}: report accepted alone")
    docs = s.expect("documents")
    check(docs.previous.version == 1 and docs.current.version == 2, f"{who}: documents previous/current")
    s.get("g1")
    got = s.expect("get_ok")
    check(got.client_token == "g1" and got.version == 2, f"{who}: GET version 2")
    check(got.state.desired["color"] == "red", f"{who}: a report never clears desired")
    check(got.state.delta == {"color": "red"}, f"{who}: delta stays until reported matches: {got.state.delta}")
    check(s.quiet("delta"), f"{who}: a report alone publishes no delta")

    # A stale version is refused with 409 and changes nothing.
    s.update(iotshadow.ShadowState(desired={"color": "green"}), "u3", version=1)
    err = s.expect("update_err")
    check(err.code == 409 and err.client_token == "u3" and err.message == "Version conflict",
          f"{who}: stale version is 409: {err.code} {err.message}")

    # The device reports the desired color with the right version: the delta is gone.
    s.update(iotshadow.ShadowState(reported={"color": "red"}), "u4", version=2)
    ok = s.expect("update_ok")
    check(ok.version == 3, f"{who}: guarded update accepted")
    s.expect("documents")
    s.get("g2")
    got = s.expect("get_ok")
    check(got.state.delta is None, f"{who}: no delta once reported matches: {got.state.delta}")

    # null deletes a subtree, then a whole section.
    s.update(iotshadow.ShadowState(reported={"level": None}), "u5")
    s.expect("update_ok")
    s.expect("documents")
    s.update(iotshadow.ShadowState(desired=None, desired_is_nullable=True), "u6")
    ok = s.expect("update_ok")
    check(ok.version == 5, f"{who}: null updates raise the version")
    s.expect("documents")
    s.get("g3")
    got = s.expect("get_ok")
    check(got.state.desired is None and got.state.reported == {"color": "red"},
          f"{who}: null deleted the subtree and the section: {got.state.desired} {got.state.reported}")

    # Malformed state is refused with 400.
    s.client.mqtt_connection.publish(
        topic=(f"$aws/things/{s.thing}/shadow/update" if s.name is None
               else f"$aws/things/{s.thing}/shadow/name/{s.name}/update"),
        payload='{"state": {"desired": 5}, "clientToken": "bad"}', qos=QOS)[0].result(TIMEOUT_S)
    err = s.expect("update_err")
    check(err.code == 400 and err.client_token == "bad", f"{who}: malformed state is 400")

    # Delete: accepted with the version, then GET is 404, then a new shadow continues.
    s.delete("d1")
    gone = s.expect("delete_ok")
    check(gone.version == 5 and gone.client_token == "d1", f"{who}: delete accepted at version 5")
    s.get("g4")
    err = s.expect("get_err")
    check(err.code == 404, f"{who}: GET after delete is 404")
    s.delete("d2")
    err = s.expect("delete_err")
    check(err.code == 404, f"{who}: DELETE after delete is 404")
    s.update(iotshadow.ShadowState(reported={"on": True}), "u7")
    ok = s.expect("update_ok")
    check(ok.version == 6, f"{who}: a re-created shadow continues the version: {ok.version}")
    s.expect("documents")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    elg = io.EventLoopGroup(1)
    bootstrap = io.ClientBootstrap(elg, io.DefaultHostResolver(elg))
    connection = mqtt.Connection(
        client=mqtt.Client(bootstrap, None),
        host_name="127.0.0.1",
        port=args.port,
        client_id="sdk-" + uuid.uuid4().hex[:12],
        clean_session=True,
        keep_alive_secs=30,
    )
    connection.connect().result(TIMEOUT_S)
    client = iotshadow.IotShadowClient(connection)
    thing = "sdk-lamp-" + uuid.uuid4().hex[:8]
    for name in (None, "config"):
        scenario(Shadow(client, thing, name))
    connection.disconnect().result(TIMEOUT_S)
    print(f"AWS IoT Device SDK shadow test: {checks} checks passed (classic and named shadow of {thing})")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure must fail the CI step
        print(f"AWS IoT Device SDK shadow test FAILED after {checks} checks: {e}", file=sys.stderr)
        sys.exit(1)

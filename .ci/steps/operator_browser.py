"""Drives headless Chromium over WebDriver (chromium-driver) against `iot-operator run`.

usage: operator_browser.py INFO_FILE DRIVER_PORT SCREENSHOT_DIR

Every check compares what the page shows with what the API answers, and the operator
actions made in the page (a desired value, pausing a rollout) must take effect in the
backend and, for the desired value, on the device itself (it reports the value back).
"""

import base64
import json
import sys
import time
import urllib.error
import urllib.request

info_file, driver_port, shots = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = open(info_file).read().split()
addr = lines[0]
tokens = dict(zip(lines[1::2], lines[2::2]))
token = tokens["acme"]
base = f"http://{addr}"
driver = f"http://127.0.0.1:{driver_port}"
passed = failed = 0


def http(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def api(method, path, body=None, tok=token):
    return http(method, f"{base}/api/v1{path}", body, {"Authorization": f"Bearer {tok}"})


def check(name, ok):
    global passed, failed
    print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    if ok:
        passed += 1
    else:
        failed += 1


def until(what, fn, seconds=40):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what} (last: {last!r})")


# Wait until every device is registered and active, as the API sees it.
until("6 active devices", lambda: api("GET", "/health")[1]["by_state"]["active"] + api("GET", "/health", tok=tokens["globex"])[1]["by_state"]["active"] == 6, 60)

for attempt in range(50):
    try:
        status, session = http("POST", f"{driver}/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"]},
        }}})
        break
    except (urllib.error.URLError, ConnectionError):
        time.sleep(0.2)
else:
    raise SystemExit("chromedriver did not answer")
assert status == 200, session
sid = session["value"]["sessionId"]
wd = f"{driver}/session/{sid}"


def js(script, *args):
    status, r = http("POST", f"{wd}/execute/sync", {"script": script, "args": list(args)})
    assert status == 200, r
    return r["value"]


def text(element_id):
    return js("const e = document.getElementById(arguments[0]); return e ? e.textContent : null;", element_id)


def shot(name):
    _, r = http("GET", f"{wd}/screenshot")
    path = f"{shots}/{name}.png"
    with open(path, "wb") as f:
        f.write(base64.b64decode(r["value"]))
    return path


try:
    # 1. The fleet page shows the counts the API returns.
    http("POST", f"{wd}/url", {"url": f"{base}/#token={token}"})
    until("the page to load", lambda: js("return document.body.dataset.loaded") == "1")
    health = api("GET", "/health")[1]
    until("the counts", lambda: text("count-total") == str(health["total"]))
    for key in ["total", "healthy", "low_battery", "offline"]:
        now = api("GET", "/health")[1]
        check(f"fleet page shows {key} = {now[key]} as the API does", until(key, lambda k=key: text(f"count-{k}") == str(api("GET", "/health")[1][k]), 10))
    # The device tier's data reduction: the devices' heartbeats carry their reading counts.
    tier = lambda: api("GET", "/health")[1]["data_reduction"][0]
    check("devices reported readings sampled (>= sent)", until("readings", lambda: tier()["in"] > 0 and tier()["in"] >= tier()["out"], 30))
    for key in ["in", "out"]:
        check(f"the data-reduction panel shows the device tier's {key} as the API does",
              until(f"tier {key}", lambda k=key: text(f"reduction-device-{k}") == str(tier()[k]), 10))
    check("the panel shows the API's reduction percentage",
          until("tier percent", lambda: (lambda t: t["reduction_percent"] is not None and text("reduction-device-percent") == f'{t["reduction_percent"]:.1f} %')(tier()), 10))
    check("the page shows acme's 4 devices only (not globex's)", until("devices", lambda: text("device-count") == "4 devices", 10))
    check("the audit chain is shown verified", until("chain", lambda: text("chain-ok") == "chain verified", 10))
    print("  screenshot:", shot("fleet"))

    # 2. A rollout started through the API shows up; the pause button in the page pauses it.
    status, body = api("POST", "/rollouts", {"version": 2, "previous": 1, "stages_bp": [5000, 10000], "report_timeout_ms": 600000})
    check("rollout started", status == 201)
    rid = body["id"]
    until("the rollout row", lambda: js("return !!document.querySelector(arguments[0])", f'button[data-rollout="{rid}"][data-action="pause"]'), 10)
    check("rollout row shows its state", until("state", lambda: "running" in js("return document.querySelector(arguments[0]).textContent", f"#rollout-{rid} .rollout-state"), 10))
    js("document.querySelector(arguments[0]).click()", f'button[data-rollout="{rid}"][data-action="pause"]')
    check("pausing in the page paused the rollout in the backend", until("paused", lambda: api("GET", f"/rollouts/{rid}")[1]["status"]["state"] == "paused", 10))
    check("the page shows it paused", until("paused row", lambda: "paused" in js("return document.querySelector(arguments[0]).textContent", f"#rollout-{rid} .rollout-state"), 10))
    print("  screenshot:", shot("rollout-paused"))

    # 3. The device page: set a desired value in the form; the device gets it and reports it.
    device = api("GET", "/devices?limit=1")[1]["devices"][0]["id"]
    http("POST", f"{wd}/url", {"url": f"{base}/#token={token}&device={device}"})
    until("device page", lambda: text("device-id") == device)
    until("device state", lambda: text("device-state") == "active")
    version = api("GET", f"/devices/{device}/shadow")[1]["version"]
    check("device page shows the shadow version the API returns", until("version", lambda: text("shadow-version") == str(api("GET", f"/devices/{device}/shadow")[1]["version"]), 10))
    js("document.getElementById('desired-path').value = 'led'; document.getElementById('desired-value').value = 'true'; document.getElementById('desired-submit').click();")
    until("desired accepted", lambda: "sent to the device" in (text("desired-result") or ""), 10)
    check("the desired value reached the backend", api("GET", f"/devices/{device}/shadow")[1]["desired"].get("led") is True)
    check("the device applied it and reported it back", until("reported led", lambda: api("GET", f"/devices/{device}/shadow")[1]["reported"].get("led") is True, 30))
    check("the page shows the reported value", until("reported cell", lambda: js("const c = document.querySelector('td[data-field=\"led\"][data-kind=\"reported\"]'); return c && c.textContent") == "true", 10))
    check("the page shows the lifecycle history", until("history", lambda: "Transition" in (text("device-audit") or ""), 10))
    print("  screenshot:", shot("device"))
    check("the shadow version moved on", api("GET", f"/devices/{device}/shadow")[1]["version"] > version)
finally:
    http("DELETE", wd)

print(f"operator browser: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)

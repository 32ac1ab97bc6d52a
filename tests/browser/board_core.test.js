// Unit tests of the alert board's pure logic (gateway/feed/static/board-core.js), run with
// node's built-in test runner by tests/browser/test_board_page.py.
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const core = require("../../gateway/feed/static/board-core.js");

const alert = (seq, kind, machine, extra) => Object.assign(
  { seq, kind, machine, opened: "2026-11-21T06:00:00.000Z", data: {}, acknowledged_by: null },
  extra || {});

test("ages read like a person would say them", () => {
  assert.equal(core.formatAge(-3), "0 s");
  assert.equal(core.formatAge(59.9), "59 s");
  assert.equal(core.formatAge(125), "2 min");
  assert.equal(core.formatAge(3 * 3600 + 5 * 60), "3 h 05 min");
  assert.equal(core.formatAge(50 * 3600), "2 d 2 h");
});

test("alerts are grouped by machine, newest group and newest alert first", () => {
  const groups = core.groupByMachine([
    alert(3, "door", "p1/1"), alert(9, "tilt", "p2/1"), alert(5, "handpay", "p1/1"),
    alert(7, "bufferOverflow", null),
  ]);
  assert.deepEqual(groups.map((g) => g.machine), ["p2/1", "gateway", "p1/1"]);
  assert.deepEqual(groups[2].alerts.map((a) => a.seq), [5, 3]);
});

test("only new handpays and tilts are loud, and never on the first state", () => {
  const before = [alert(1, "tilt", "p1/1")];
  const after = [alert(1, "tilt", "p1/1"), alert(2, "handpay", "p2/1"), alert(3, "door", "p1/1"),
    alert(4, "tilt", "p3/1")];
  assert.deepEqual(core.newLoudAlerts(null, after), []);
  assert.deepEqual(core.newLoudAlerts(before, after), [2, 4]);
});

test("reconnect backoff is capped with full jitter", () => {
  assert.equal(core.backoffDelay(0, 0.5, 1000, 30000), 500);
  assert.equal(core.backoffDelay(3, 0.999, 1000, 30000), 7992);
  assert.equal(core.backoffDelay(20, 0.5, 1000, 30000), 15000);
  assert.equal(core.backoffDelay(5, 0, 1000, 30000), 0);
});

test("the uplink banner shows only while the uplink is down, in plain words", () => {
  assert.equal(core.uplinkBanner({ connected: true }, 0), null);
  assert.equal(core.uplinkBanner({ connected: null }, 0), null);
  const since = "2026-11-21T06:00:00.000Z";
  const banner = core.uplinkBanner(
    { connected: false, since, reason: "connection closed: 1006 ABNORMAL_CLOSURE" },
    Date.parse(since) + 125000);
  const hhmm = core.clockTime(Date.parse(since));
  assert.match(hhmm, /^\d\d:\d\d$/);
  assert.ok(banner.text.startsWith("Platform connection lost since " + hhmm +
    " (network), 2 min ago."), banner.text);
  assert.doesNotMatch(banner.text, /1006|ABNORMAL/);
  assert.equal(banner.detail, "connection closed: 1006 ABNORMAL_CLOSURE");
  const bare = core.uplinkBanner({ connected: false }, 0);
  assert.ok(bare.text.startsWith("Platform connection lost (cause unknown)."), bare.text);
  assert.equal(bare.detail, null);
});

test("technical uplink reasons become words floor staff understand", () => {
  const cases = {
    "connection closed: 1006 ABNORMAL_CLOSURE": "network",
    "OSError: all attempts to connect to 10.0.0.5:443 failed": "network",
    "platform unreachable": "network",
    "connect timed out during websocket upgrade (10 s)": "no answer from the platform",
    "platform did not answer a ping within 30 s": "no answer from the platform",
    "timeout": "no answer from the platform",
    "platform refused the connection: HTTP 401": "login refused",
    "platform closed the connection: 4001 unknown token": "login refused",
    "platform answered HTTP 503": "platform problem",
    "platform broke the protocol: expected welcome": "platform problem",
    "TLS verification failed: certificate has expired": "security certificate problem",
    "token file /etc/casino-gateway/uplink.token is empty": "gateway setup problem",
    "something new": "cause unknown",
  };
  for (const [reason, words] of Object.entries(cases)) {
    assert.equal(core.uplinkCause(reason), words, reason);
  }
  assert.equal(core.uplinkCause(null), "cause unknown");
});

test("descriptions and who may acknowledge", () => {
  assert.equal(core.describe(alert(1, "handpay", "p", { data: { amount: { minor: 123456789,
    currency: "USD" } } })), "1,234,567.89 USD");
  assert.equal(core.describe(alert(1, "door", "p", { data: { door: "main" } })), "main door");
  assert.equal(core.describe(alert(1, "tilt", "p", { data: { kind: "reel" } })), "reel");
  assert.equal(core.canAcknowledge("viewer", alert(1, "tilt", "p")), false);
  assert.equal(core.canAcknowledge("attendant", alert(1, "tilt", "p")), true);
  assert.equal(core.canAcknowledge("supervisor", alert(1, "tilt", "p", { acknowledged_by: "x" })),
    false);
});

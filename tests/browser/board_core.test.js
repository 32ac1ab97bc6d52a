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

test("only new handpays are loud, and never on the first state", () => {
  const before = [alert(1, "tilt", "p1/1")];
  const after = [alert(1, "tilt", "p1/1"), alert(2, "handpay", "p2/1"), alert(3, "door", "p1/1"),
    alert(4, "tilt", "p3/1")];
  assert.deepEqual(core.newLoudAlerts(null, after), []);
  assert.deepEqual(core.newLoudAlerts(before, after), [2]);
});

test("a tile shows its machine's worst alert: needing action, then severity, then oldest", () => {
  const tilt = alert(3, "tilt", "p1/1");
  const door = alert(5, "door", "p1/1");
  const ackedHandpay = alert(2, "handpay", "p1/1", { acknowledged_by: "ann" });
  assert.equal(core.worstAlert([tilt, door, ackedHandpay]).seq, 5);
  assert.equal(core.worstAlert([tilt, ackedHandpay]).seq, 3);
  assert.equal(core.worstAlert([ackedHandpay]).seq, 2);
  assert.equal(core.worstAlert([]), null);
  assert.equal(core.worstAlert([alert(9, "tilt", "p"), alert(4, "tilt", "p")]).seq, 4);
});

test("tiles are ordered by severity, then needing action, then age", () => {
  const worst = new Map([
    ["p1/1", alert(10, "tilt", "p1/1")], ["p2/1", alert(11, "handpay", "p2/1")],
    ["p3/1", alert(3, "tilt", "p3/1")], ["p4/1", alert(2, "handpay", "p4/1",
      { acknowledged_by: "ann" })], ["p5/1", alert(7, "door", "p5/1")],
  ]);
  assert.deepEqual(core.tileOrder(worst), ["p2/1", "p4/1", "p5/1", "p3/1", "p1/1"]);
});

test("deltas apply above the client's version, and a gap asks for a resync", () => {
  const alerts = new Map([[1, alert(1, "tilt", "p1/1")]]);
  const delta = { base: 1, version: 3, changes: [
    { v: 2, op: "opened", alert: alert(4, "door", "p2/1") },
    { v: 3, op: "closed", seq: 1, machine: "p1/1" }] };
  const done = core.applyDelta(alerts, 1, delta);
  assert.deepEqual([done.resync, done.version], [false, 3]);
  assert.deepEqual([...alerts.keys()], [4]);
  assert.deepEqual(done.machines.sort(), ["p1/1", "p2/1"]);
  // The same delta again (a resync overlapped it) changes nothing.
  assert.equal(core.applyDelta(alerts, 3, delta).version, 3);
  assert.deepEqual([...alerts.keys()], [4]);
  const gap = core.applyDelta(alerts, 3, { base: 5, version: 6, changes: [] });
  assert.equal(gap.resync, true);
});

test("machines and banks in plain words", () => {
  assert.equal(core.bankOf("bank-a-05/1"), "bank-a");
  assert.equal(core.bankOf("pit3/2"), "pit");
  assert.equal(core.bankOf("lobby/1"), "lobby");
  assert.equal(core.bankOf(null), "gateway");
  assert.equal(core.bankName("bank-a"), "Bank A");
  assert.equal(core.machineName("bank-a-05/1"), "Bank A 05 \u00B7 #1");
  assert.equal(core.machineName("bank-a-05/1", { asset: "12345" }),
    "Bank A 05 \u00B7 #1 (asset 12345)");
  assert.equal(core.words("printer_comm_error"), "Printer not responding");
  assert.equal(core.words("something_new"), "Something new");
  assert.equal(core.words("exception_7f"), "Code 7f");
});

test("frozen and never-connected uplinks are said as such", () => {
  const since = "2026-11-21T06:00:00.000Z";
  const frozen = core.uplinkBanner({ connected: false, state: "frozen", since,
    reason: "connected, but the platform has acknowledged nothing for over 10 s" },
  Date.parse(since) + 30000);
  assert.match(frozen.text, /^Platform not answering since .*\(the platform stopped answering\)/);
  const never = core.uplinkBanner({ connected: false, state: "down", since,
    reason: "never connected since start: connection refused" }, Date.parse(since) + 5000);
  assert.match(never.text, /^Platform not connected since the gateway started at 06:00|^Platform not connected since the gateway started at \\d\\d:\\d\\d/);
  assert.match(never.text, /\(network\)/);
  assert.equal(core.clockTime(Date.parse(since), "UTC"), "06:00");
  assert.equal(core.clockTime(Date.parse(since), "America/Chicago"), "00:00");
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
  assert.equal(core.describe(alert(1, "door", "p", { data: { door: "main" } })), "Main door");
  assert.equal(core.describe(alert(1, "tilt", "p", { data: { kind: "reel" } })), "Reel fault");
  assert.equal(core.describe(alert(1, "tilt", "p", { data: { kind: "bill_jam" }, count: 3 })),
    "Bill jam (3 times)");
  assert.equal(core.canAcknowledge("viewer", alert(1, "tilt", "p")), false);
  assert.equal(core.canAcknowledge("attendant", alert(1, "tilt", "p")), true);
  assert.equal(core.canAcknowledge("supervisor", alert(1, "tilt", "p", { acknowledged_by: "x" })),
    false);
});

test("a card reader offline: its own words and symbol, ranked below the machine's faults", () => {
  assert.equal(core.KIND_LABELS.reader, "Card reader offline");
  assert.equal(core.describe(alert(1, "reader", "p", { data: { reader: "reader-1" } })),
    "Players here cannot be rated (reader reader-1)");
  assert.ok(core.KIND_SYMBOLS.reader && core.KIND_SYMBOLS.reader !== core.KIND_SYMBOLS.offline);
  const worst = core.worstAlert([alert(1, "reader", "p"), alert(2, "offline", "p")]);
  assert.equal(worst.kind, "offline");
  assert.equal(core.worstAlert([alert(1, "reader", "p"), alert(2, "bufferOverflow", "p")]).kind,
    "reader");
});

const card = (seq, event, machine, cardId, timestamp) => ({
  seq, event, channel: "player", timestamp: timestamp || "2026-11-21T06:00:00.000Z",
  machine: { port: machine.split("/")[0], address: Number(machine.split("/")[1]) },
  data: cardId ? { card_id: cardId, key_id: "1210c263", medium: "magstripe" } : {},
});

test("the player view: seated cards until removed, reads for a while, each event once", () => {
  assert.equal(core.canSeePlayers("viewer"), false);
  assert.equal(core.canSeePlayers("attendant"), true);
  const players = new Map();
  const t0 = Date.parse("2026-11-21T06:00:00.000Z");
  assert.equal(core.applyPlayerEvent(players, card(5, "cardInserted", "egm-10/1", "aa".repeat(16))), true);
  assert.equal(core.applyPlayerEvent(players, card(6, "cardRead", "egm-2/1", "bb".repeat(16))), true);
  assert.equal(core.applyPlayerEvent(players, card(5, "cardInserted", "egm-10/1", "aa".repeat(16))), false);
  assert.equal(core.applyPlayerEvent(players, card(7, "cardBadRead", "egm-2/1", null)), false);
  assert.deepEqual(core.playerRows(players, t0 + 125000).map((r) => [r.machine, r.text]), [
    ["egm-2/1", "Player bbbbbbbb, card read 2 min ago"],
    ["egm-10/1", "Player aaaaaaaa, card in for 2 min"],
  ]);
  // A read fades after READ_SHOWN_S; a seated card stays until it is removed.
  const later = t0 + (core.READ_SHOWN_S + 1) * 1000;
  assert.deepEqual(core.playerRows(players, later).map((r) => r.machine), ["egm-10/1"]);
  assert.equal(core.applyPlayerEvent(players, card(9, "cardRemoved", "egm-10/1", "aa".repeat(16))), true);
  assert.deepEqual(core.playerRows(players, later), []);
  assert.equal(core.applyPlayerEvent(players, { channel: "alerts", event: "tilt", seq: 10 }), false);
});

// Alert board logic with no DOM and no network, so it can be tested under node
// (tests/browser/) and reused by board.js. Protocol: docs/feed-protocol.md.
"use strict";

(function (root) {
  const KIND_LABELS = {
    handpay: "Handpay",
    door: "Door open",
    tilt: "Tilt",
    offline: "Offline",
    bufferOverflow: "Events lost",
  };
  // Alerts that call for an attendant now: a new one beeps and flashes.
  const LOUD_KINDS = new Set(["handpay", "tilt"]);

  function parseTime(rfc3339) {
    const ms = Date.parse(rfc3339);
    return Number.isNaN(ms) ? null : ms;
  }

  // Seconds -> "45 s", "12 min", "3 h 05 min", "2 d 4 h".
  function formatAge(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min";
    const h = Math.floor(m / 60);
    if (h < 24) return h + " h " + String(m % 60).padStart(2, "0") + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function formatMoney(money) {
    if (!money || typeof money.minor !== "number") return "";
    const major = (money.minor / 100).toFixed(2);
    return major.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + " " + (money.currency || "");
  }

  // One line saying what the alert is about, from its data.
  function describe(alert) {
    const data = alert.data || {};
    switch (alert.kind) {
      case "handpay":
        return data.amount ? formatMoney(data.amount) : "amount not reported";
      case "door":
        return (data.door || "unknown") + " door";
      case "tilt":
        return data.kind || "";
      case "bufferOverflow":
        return data.detail || "the machine's event queue overflowed";
      default:
        return "";
    }
  }

  // Alerts grouped by machine: groups ordered by their newest alert, alerts newest first.
  function groupByMachine(alerts) {
    const groups = new Map();
    for (const alert of alerts) {
      const key = alert.machine || "gateway";
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(alert);
    }
    const out = [];
    for (const [machine, items] of groups) {
      items.sort((a, b) => b.seq - a.seq);
      out.push({ machine: machine, alerts: items, newest: items[0].seq });
    }
    out.sort((a, b) => b.newest - a.newest);
    return out;
  }

  // Seqs of loud alerts in `next` that were not in `previous` (null: first state, no alarm).
  function newLoudAlerts(previous, next) {
    if (previous === null) return [];
    const seen = new Set(previous.map((a) => a.seq));
    return next.filter((a) => LOUD_KINDS.has(a.kind) && !seen.has(a.seq)).map((a) => a.seq);
  }

  // Reconnect delay: capped exponential backoff with full jitter; `random` in [0, 1).
  function backoffDelay(attempt, random, baseMs, capMs) {
    const ceiling = Math.min(capMs || 30000, (baseMs || 500) * Math.pow(2, attempt));
    return Math.floor(random * ceiling);
  }

  // What floor staff are told about why the platform connection is down, from the uplink's
  // technical reason (gateway/uplink/client.py). First match wins; the order matters ("refused
  // the connection: HTTP 401" is a refused login, not a network fault).
  const UPLINK_CAUSES = [
    [/TLS (verification|handshake) failed|certificate/i, "security certificate problem"],
    [/token file/i, "gateway setup problem"],
    [/HTTP 40[13]\b|\b4001\b|refused the connection|closed the connection: 4/i, "login refused"],
    [/HTTP 5\d\d|answered HTTP|broke the protocol|platform error/i, "platform problem"],
    [/timed? ?out|did not answer|no welcome|timeout/i, "no answer from the platform"],
    [/closed|1006|unreachable|refused|reset|broken|errno|network|connect|OSError/i, "network"],
  ];

  function uplinkCause(reason) {
    if (!reason) return "cause unknown";
    for (const [pattern, words] of UPLINK_CAUSES) {
      if (pattern.test(reason)) return words;
    }
    return "cause unknown";
  }

  // "14:02" in the browser's time zone.
  function clockTime(ms) {
    const at = new Date(ms);
    return String(at.getHours()).padStart(2, "0") + ":" + String(at.getMinutes()).padStart(2, "0");
  }

  // The uplink banner, or null when there is nothing to warn about: `text` in plain words for
  // floor staff, `detail` the technical reason (for the small print and the tooltip) or null.
  function uplinkBanner(uplink, nowMs) {
    if (!uplink || uplink.connected !== false) return null;
    let text = "Platform connection lost";
    const since = uplink.since ? parseTime(uplink.since) : null;
    if (since !== null) text += " since " + clockTime(since);
    text += " (" + uplinkCause(uplink.reason) + ")";
    if (since !== null) text += ", " + formatAge((nowMs - since) / 1000) + " ago";
    return {
      text: text + ". Alerts still work; events are kept on this gateway and sent when the " +
        "connection is back.",
      detail: uplink.reason || null,
    };
  }

  function canAcknowledge(role, alert) {
    return (role === "attendant" || role === "supervisor") && !alert.acknowledged_by;
  }

  const api = {
    KIND_LABELS, LOUD_KINDS, backoffDelay, canAcknowledge, clockTime, describe, formatAge,
    formatMoney, groupByMachine, newLoudAlerts, parseTime, uplinkBanner, uplinkCause,
  };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  } else {
    root.BoardCore = api;
  }
})(this);

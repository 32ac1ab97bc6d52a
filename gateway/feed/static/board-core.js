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

  // The uplink banner text, or null when there is nothing to warn about.
  function uplinkBanner(uplink, nowMs) {
    if (!uplink || uplink.connected !== false) return null;
    let text = "Platform uplink DOWN";
    const since = uplink.since ? parseTime(uplink.since) : null;
    if (since !== null) {
      text += " since " + new Date(since).toLocaleTimeString() +
        " (" + formatAge((nowMs - since) / 1000) + ")";
    }
    if (uplink.reason) text += ": " + uplink.reason;
    return text + ". Events are kept on this gateway and sent when it is back.";
  }

  function canAcknowledge(role, alert) {
    return (role === "attendant" || role === "supervisor") && !alert.acknowledged_by;
  }

  const api = {
    KIND_LABELS, LOUD_KINDS, backoffDelay, canAcknowledge, describe, formatAge, formatMoney,
    groupByMachine, newLoudAlerts, parseTime, uplinkBanner,
  };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  } else {
    root.BoardCore = api;
  }
})(this);

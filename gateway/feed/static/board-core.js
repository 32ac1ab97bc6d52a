// Alert board logic with no DOM and no network, so it can be tested under node
// (tests/browser/) and reused by board.js. Protocol: docs/feed-protocol.md.
"use strict";

(function (root) {
  // What each kind is called on the floor, and a symbol so it reads without colour.
  const KIND_LABELS = {
    handpay: "HANDPAY",
    door: "DOOR OPEN",
    tilt: "Fault",
    offline: "Not responding",
    reader: "Card reader offline",
    bufferOverflow: "Events lost",
    meters: "Meters do not add up",
  };
  const KIND_SYMBOLS = { handpay: "$", door: "\u25B2", tilt: "!", offline: "\u2715",
    reader: "\u25AD", bufferOverflow: "?", meters: "\u2260" };
  // Most urgent first (the server's gateway/feed/state.py SEVERITY).
  const SEVERITY = { handpay: 0, door: 1, tilt: 2, offline: 3, reader: 4, bufferOverflow: 5,
    meters: 6 };
  // Alerts an acknowledgement closes (the server's gateway/feed/state.py CLOSED_BY_ACK); the
  // others stay on the board, marked, until what raised them is over (STAYS_UNTIL says what).
  const CLOSED_BY_ACK = ["tilt", "bufferOverflow", "meters"];
  const STAYS_UNTIL = { offline: "the machine answers again", reader: "the card reader is back" };
  // Alerts that call for an attendant now: a new one sounds and flashes.
  const LOUD_KINDS = new Set(["handpay"]);

  // SAS exception names (drivers/sas/codes.py, lower case) in plain words.
  const FAULT_WORDS = {
    general_tilt: "General fault", coin_in_tilt: "Coin jam (in)", coin_out_tilt: "Coin jam (out)",
    hopper_empty: "Hopper empty", extra_coin_paid: "Extra coin paid",
    diverter_malfunction: "Coin diverter fault", cashbox_full: "Cash box full",
    bill_jam: "Bill jam", bill_acceptor_failure: "Bill acceptor broken",
    reverse_bill: "Bill pulled back", bill_rejected: "Bill rejected",
    counterfeit_bill: "Suspected counterfeit bill", reverse_coin_in: "Coin pulled back",
    nvram_error_data_recovered: "Memory error (recovered)",
    nvram_error_no_data_recovered: "Memory error (data lost)",
    nvram_error_bad_device: "Memory device broken", eeprom_data_error: "Memory data error",
    eeprom_bad_device: "Memory device broken", eprom_version_changed: "Software changed",
    eprom_bad_checksum: "Software check failed",
    partitioned_eprom_version_changed: "Software changed",
    partitioned_eprom_bad_checksum: "Software check failed",
    memory_error_reset: "Memory reset", low_backup_battery: "Backup battery low",
    reel_tilt: "Reel fault", reel_1_tilt: "Reel 1 fault", reel_2_tilt: "Reel 2 fault",
    reel_3_tilt: "Reel 3 fault", reel_4_tilt: "Reel 4 fault", reel_5_tilt: "Reel 5 fault",
    reel_disconnected: "Reel disconnected", printer_comm_error: "Printer not responding",
    printer_paper_out: "Printer out of paper", printer_paper_low: "Printer paper low",
    printer_power_off: "Printer switched off", printer_power_on: "Printer switched on",
    printer_carriage_jam: "Printer jam", reel: "Reel fault",
  };
  const DOOR_WORDS = { main: "Main door", drop: "Drop door", card_cage: "Card cage",
    cashbox: "Cash box door", belly: "Belly door" };

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

  function words(code) {
    if (!code) return "";
    if (FAULT_WORDS[code]) return FAULT_WORDS[code];
    const text = String(code).replace(/^exception_/, "code ").replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // One line saying what the alert is about, from its data, in plain words.
  function describe(alert) {
    const data = alert.data || {};
    switch (alert.kind) {
      case "handpay":
        return data.amount ? formatMoney(data.amount) : "amount not reported";
      case "door":
        return DOOR_WORDS[data.door] || (data.door ? words(data.door) + " door" : "A door");
      case "tilt":
        return words(data.kind) + (alert.count > 1 ? " (" + alert.count + " times)" : "");
      case "offline":
        return "The gateway cannot reach this machine";
      case "reader":
        return "Players here cannot be rated" + (data.reader ? " (reader " + data.reader + ")"
          : "");
      case "bufferOverflow":
        return data.detail || "The machine's event queue overflowed";
      case "meters":
        return (data.meter || "A meter") + ": " + (data.difference > 0 ? "+" : "") +
          (data.difference ?? "?") + " against the events (" + (data.cause || "?") + ")";
      default:
        return "";
    }
  }

  // "bank-a-05" -> "bank-a": machines share a bank when their port names differ only in the
  // trailing number. A port without one is its own bank.
  function bankOf(machine) {
    if (!machine) return "gateway";
    const port = machine.split("/")[0];
    const match = /^(.*?)[-_]?\d+$/.exec(port);
    return match && match[1] ? match[1] : port;
  }

  function bankName(bank) {
    if (bank === "gateway") return "Gateway";
    return bank.split(/[-_]/).map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
  }

  // "bank-a-05/1" -> "Bank A 05 · #1", or the machine's asset number when it has one.
  function machineName(machine, info) {
    if (!machine) return "Gateway";
    const [port, address] = machine.split("/");
    const base = port.split(/[-_]/).map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
    const asset = info && info.asset ? " (asset " + info.asset + ")" : "";
    return base + " \u00B7 #" + address + asset;
  }

  // The alert a machine's tile shows: unacknowledged before acknowledged, then the most
  // urgent, then the oldest.
  function rank(alert) {
    return [alert.acknowledged_by ? 1 : 0, SEVERITY[alert.kind] === undefined ? 9
      : SEVERITY[alert.kind], alert.seq];
  }

  function compareRank(a, b) {
    const ra = rank(a);
    const rb = rank(b);
    for (let i = 0; i < ra.length; i += 1) {
      if (ra[i] !== rb[i]) return ra[i] - rb[i];
    }
    return 0;
  }

  function worstAlert(alerts) {
    let worst = null;
    for (const alert of alerts) {
      if (worst === null || compareRank(alert, worst) < 0) worst = alert;
    }
    return worst;
  }

  // Tiles (machine -> its worst alert) in board order: severity, then needing action, then age.
  function tileOrder(worstByMachine) {
    return [...worstByMachine.entries()].sort(([ma, a], [mb, b]) => {
      const sa = SEVERITY[a.kind] === undefined ? 9 : SEVERITY[a.kind];
      const sb = SEVERITY[b.kind] === undefined ? 9 : SEVERITY[b.kind];
      if (sa !== sb) return sa - sb;
      const aa = a.acknowledged_by ? 1 : 0;
      const ab = b.acknowledged_by ? 1 : 0;
      if (aa !== ab) return aa - ab;
      if (a.seq !== b.seq) return a.seq - b.seq;
      return ma < mb ? -1 : 1;
    }).map(([machine]) => machine);
  }

  // Applies an `alerts_delta` to `alerts` (a Map seq -> alert) at `version`. Returns the new
  // version and the machines touched, or {resync: true} when a delta was missed.
  function applyDelta(alerts, version, delta) {
    if (delta.base > version) return { resync: true, version: version, machines: [] };
    const machines = new Set();
    for (const change of delta.changes) {
      if (change.v <= version) continue;
      if (change.op === "closed") {
        const gone = alerts.get(change.seq);
        if (gone) machines.add(gone.machine || "gateway");
        alerts.delete(change.seq);
      } else {
        alerts.set(change.alert.seq, change.alert);
        machines.add(change.alert.machine || "gateway");
      }
    }
    return { resync: false, version: Math.max(version, delta.version), machines: [...machines] };
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
    [/acknowledged nothing|frozen/i, "the platform stopped answering"],
    [/TLS (verification|handshake) failed|certificate/i, "security certificate problem"],
    [/token file/i, "gateway setup problem"],
    [/HTTP 40[13]\b|\b4001\b|refused the connection|closed the connection: 4/i, "login refused"],
    [/HTTP 5\d\d|answered HTTP|broke the protocol|platform error/i, "platform problem"],
    [/timed? ?out|did not answer|no welcome|timeout/i, "no answer from the platform"],
    [/closed|1006|unreachable|refused|reset|broken|errno|network|connect|OSError/i, "network"],
  ];

  function uplinkCause(reason) {
    if (!reason) return "cause unknown";
    const text = String(reason).replace(/^never connected since start: /, "");
    for (const [pattern, said] of UPLINK_CAUSES) {
      if (pattern.test(text)) return said;
    }
    return "cause unknown";
  }

  // "14:02" in the venue's time zone (IANA name from the gateway), else the browser's.
  function clockTime(ms, timeZone) {
    const options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (timeZone) options.timeZone = timeZone;
    try {
      return new Intl.DateTimeFormat("en-GB", options).format(new Date(ms));
    } catch (err) {
      const at = new Date(ms);
      return String(at.getHours()).padStart(2, "0") + ":" +
        String(at.getMinutes()).padStart(2, "0");
    }
  }

  // The uplink banner, or null when there is nothing to warn about: `text` in plain words for
  // floor staff, `detail` the technical reason (for the small print and the tooltip) or null.
  function uplinkBanner(uplink, nowMs, timeZone) {
    if (!uplink || uplink.connected !== false) return null;
    const frozen = uplink.state === "frozen";
    const never = /^never connected since start/.test(uplink.reason || "");
    let text = frozen ? "Platform not answering" : never
      ? "Platform not connected since the gateway started" : "Platform connection lost";
    const since = uplink.since ? parseTime(uplink.since) : null;
    if (since !== null) text += (never ? " at " : " since ") + clockTime(since, timeZone);
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

  // -- players: who is at which machine (the player channel; docs/cardreader.md) --------------

  // The server refuses the player channel below this role (gateway/feed/protocol.py PLAYER_ROLE).
  function canSeePlayers(role) {
    return role === "attendant" || role === "supervisor";
  }

  // A swipe or RFID reader cannot tell when the player leaves: a read is shown this long.
  const READ_SHOWN_S = 30 * 60;

  // Apply one player-channel envelope to `players` (machine -> {card, since, seated, seq});
  // replayed and live copies of one event are applied once (by seq). Returns true on a change.
  function applyPlayerEvent(players, env) {
    if (!env || env.channel !== "player" || !env.machine) return false;
    const machine = env.machine.port + "/" + env.machine.address;
    const current = players.get(machine);
    if (current && env.seq <= current.seq) return false;
    const card = env.data && env.data.card_id ? String(env.data.card_id).slice(0, 8) : null;
    const since = parseTime(env.timestamp);
    switch (env.event) {
      case "cardInserted":
        players.set(machine, { card, since, seated: true, seq: env.seq });
        return true;
      case "cardRead":
        players.set(machine, { card, since, seated: false, seq: env.seq });
        return true;
      case "cardRemoved":
        if (!current) return false;
        players.delete(machine);
        return true;
      default:
        return false;
    }
  }

  // Rows for the player view, by machine name; reads older than READ_SHOWN_S are left out.
  function playerRows(players, nowMs) {
    const rows = [];
    for (const [machine, p] of players) {
      const age = p.since === null ? 0 : (nowMs - p.since) / 1000;
      if (!p.seated && age > READ_SHOWN_S) continue;
      rows.push({ machine, card: p.card, seated: p.seated,
        text: "Player " + p.card + (p.seated ? ", card in for " : ", card read ") +
          formatAge(age) + (p.seated ? "" : " ago") });
    }
    return rows.sort((a, b) => a.machine.localeCompare(b.machine, undefined, { numeric: true }));
  }

  const api = {
    CLOSED_BY_ACK, KIND_LABELS, KIND_SYMBOLS, LOUD_KINDS, STAYS_UNTIL, READ_SHOWN_S, SEVERITY, applyDelta,
    applyPlayerEvent, backoffDelay, bankName, bankOf, canAcknowledge, canSeePlayers, clockTime,
    describe, formatAge, formatMoney, groupByMachine, machineName, newLoudAlerts, parseTime,
    playerRows, tileOrder, uplinkBanner, uplinkCause, words, worstAlert,
  };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  } else {
    root.BoardCore = api;
  }
})(this);

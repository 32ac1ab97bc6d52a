// The alert board page: log in with a staff token, show one tile per machine with its worst
// open alert, acknowledge with a confirmation that names the alert, keep reconnecting.
// No framework, no build step, no external resource (the server's Content-Security-Policy
// allows only this origin). Text from the feed is only ever set with textContent.
//
// Taps must never act on the wrong alert, so the board never moves under a finger:
// - updates are keyed patches of the tile of the machine concerned (never a rebuild);
// - a new machine's tile is added at the end, a cleared machine's tile stays as a "cleared"
//   placeholder, and tiles have a fixed size, so no tile moves while someone uses the board;
// - the board is re-sorted (severity, then age) only after HOLD_MS without a touch, or when the
//   Sort button is pressed; a tap within GUARD_MS of a re-sort (or a filter change) is refused
//   ("check and tap again"): tiles moved, so the point tapped may name another alert than read;
// - a tap names the alert its tile showed at the instant the finger came down (pointerdown),
//   whatever the tile shows by the time the click arrives; nothing else about the tile (its
//   age, "+N more", another alert opening or closing on the machine) refuses the tap. It is
//   refused only if that alert is gone (cleared by its machine) before the tap is taken;
// - Acknowledge opens a confirmation bound to that alert's id and naming it by kind, machine and
//   time (with a warning if the tile switched alerts just before the tap); only "Yes" sends it,
//   for the alert named, whatever the board has done meanwhile.
"use strict";

(function () {
  const core = window.BoardCore;
  const TOKEN_KEY = "casino-feed-token";
  const LOGIN_AT_KEY = "casino-feed-login-at";
  const LOGIN_ID_KEY = "casino-feed-login";  // the gateway's id of this login (it ends it too)
  const HOLD_MS = 15000;
  const GUARD_MS = 800;
  const SWITCH_WARN_MS = 500; // a tile that switched alerts this soon before a tap: say so
  const CONFIRM_ARM_MS = 300;
  const PRESS_MS = 2000;     // a click more than this after its pointerdown is taken as new
  const $ = (id) => document.getElementById(id);

  const model = {
    alerts: new Map(),      // seq -> alert
    byMachine: new Map(),   // machine -> Set of seqs
    version: 0,
    resyncing: false,
    uplink: null,
    identity: null,
    clockOffset: 0,         // gateway clock - browser clock, ms
    timeZone: null,
    sessionMaxMs: 8 * 3600 * 1000,
    players: new Map(),     // machine -> player (core.applyPlayerEvent), for roles allowed
  };
  // How far back the player view looks when it (re)connects: enough for a shift's visits.
  const PLAYER_REPLAY = 5000;
  const tiles = new Map();  // machine -> tile (see makeTile)
  const flashing = new Map(); // alert seq -> until (ms)
  let heldUntil = 0;
  let sortedAt = 0;
  let needsSort = false;
  let bankFilter = null;
  let pending = null;       // the confirmation on screen: {seq, machine, sent}
  let socket = null;
  let connected = false;
  let attempt = 0;
  let retryTimer = null;
  let countdown = null;
  let stopped = false;      // after an authentication failure: wait for a new token
  let audio = null;

  // -- sound -------------------------------------------------------------------------------------

  function enableSound() {
    if (!audio && (window.AudioContext || window.webkitAudioContext)) {
      audio = new (window.AudioContext || window.webkitAudioContext)();
    }
    if (audio && audio.state === "suspended") audio.resume();
    $("sound-hint").hidden = Boolean(audio && audio.state === "running");
  }

  function beep() {
    if (!audio || audio.state !== "running") {
      $("sound-hint").hidden = false;
      return;
    }
    const start = audio.currentTime;
    [0, 0.25].forEach((offset) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.15, start + offset);
      gain.gain.exponentialRampToValueAtTime(0.001, start + offset + 0.18);
      osc.connect(gain).connect(audio.destination);
      osc.start(start + offset);
      osc.stop(start + offset + 0.2);
    });
  }

  // -- connection --------------------------------------------------------------------------------

  function feedUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + "/feed";
  }

  function connect() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showLogin("");
      return;
    }
    clearTimeout(retryTimer);
    clearInterval(countdown);
    stopped = false;
    setStatus("Connecting…", "connecting");
    let opened = false;
    const ws = new WebSocket(feedUrl());
    socket = ws;
    ws.onopen = () => {
      opened = true;
      const login = sessionStorage.getItem(LOGIN_ID_KEY);
      ws.send(JSON.stringify(login ? { type: "auth", token: token, login: login }
        : { type: "auth", token: token }));
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      handle(message);
    };
    ws.onclose = (event) => {
      if (socket === ws) socket = null;
      setConnected(false);
      if (stopped) return;
      if (event.code === 1008 && /^authentication/.test(event.reason || "")) return;
      if (event.code === 1008 && event.reason === "session expired") {
        logout(sessionEnded());
        return;
      }
      if (event.code === 1008 && event.reason) {
        scheduleReconnect("Connection dropped by the gateway (" + event.reason + ")");
      } else if (!opened) {
        diagnose();
      } else {
        scheduleReconnect("Connection to the gateway lost");
      }
    };
  }

  // The WebSocket API hides why a handshake failed: ask the same URL over plain HTTP. The
  // gateway answers 429 (with Retry-After) while this address is blocked for failed logins.
  function diagnose() {
    fetch("/feed", { cache: "no-store" }).then((response) => {
      if (response.status === 429) {
        const wait = Number(response.headers.get("retry-after")) || 60;
        tooManyFailures(wait);
      } else {
        scheduleReconnect("The gateway refused the connection");
      }
    }, () => scheduleReconnect("Gateway unreachable"));
  }

  function tooManyFailures(seconds) {
    const until = Date.now() + seconds * 1000;
    showLogin("");
    const button = $("login-form").querySelector("button");
    button.disabled = true;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      $("login-error").textContent = left > 0
        ? "Too many failed logins from this tablet. Wait " + left + " s, then log in again."
        : "";
      if (left <= 0) {
        clearInterval(countdown);
        button.disabled = false;
      }
    };
    clearInterval(countdown);
    tick();
    countdown = setInterval(tick, 1000);
    sessionStorage.removeItem(TOKEN_KEY);
    stopped = true;
  }

  function scheduleReconnect(why) {
    const delay = core.backoffDelay(attempt, Math.random(), 1000, 30000) + 250;
    attempt += 1;
    const at = Date.now() + delay;
    const since = Date.now();
    const tick = () => {
      const left = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      setStatus("Gateway: " + why.toLowerCase() + ". Reconnecting in " + left + " s…", "down");
      $("unreachable-title").textContent = why;
      $("unreachable-text").textContent = "Since " + core.clockTime(since, model.timeZone) +
        ". Trying again in " + left + " s.";
    };
    tick();
    $("unreachable").hidden = model.identity === null;
    clearInterval(countdown);
    countdown = setInterval(tick, 1000);
    retryTimer = setTimeout(() => {
      clearInterval(countdown);
      connect();
    }, delay);
  }

  function setConnected(yes) {
    connected = yes;
    document.body.classList.toggle("disconnected", !yes);
    for (const button of document.querySelectorAll(".tile button")) button.disabled = !yes;
    if (!yes && pending) closeConfirm();
    if (yes) $("unreachable").hidden = true;
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function handle(message) {
    switch (message.type) {
      case "welcome":
        attempt = 0;
        model.identity = { name: message.name, role: message.role };
        model.timeZone = message.time_zone || null;
        if (message.session_max_s) model.sessionMaxMs = message.session_max_s * 1000;
        if (message.login) sessionStorage.setItem(LOGIN_ID_KEY, message.login);
        hideLogin();
        setStatus("Connected as " + message.name + " (" + message.role + ")", "up");
        setConnected(true);
        loadState(message.state, message.time);
        watchPlayers(message.server && message.server.last_seq);
        break;
      case "events":
        if (playerEvents(message.events)) renderPlayers();
        break;
      case "alerts_snapshot":
        loadState(message.state, message.time);
        break;
      case "alerts_delta":
        applyDelta(message);
        break;
      case "status":
        model.uplink = message.uplink;
        renderBanner();
        break;
      case "ack_result":
        ackResult(message);
        break;
      case "history":
        showHistory(message);
        break;
      case "error":
        if (message.code === "auth_failed" || message.code === "auth_required") {
          stopped = true;
          sessionStorage.removeItem(TOKEN_KEY);
          showLogin(message.code === "auth_failed" ? "Unknown token." : message.message);
        } else if (message.code === "session_expired") {
          logout(sessionEnded());
        } else {
          toast(message.message);
        }
        break;
      default:
        break;
    }
  }

  // -- the player view: who is at which machine (attendants and supervisors) ---------------------

  function watchPlayers(lastSeq) {
    model.players = new Map();
    const allowed = model.identity && core.canSeePlayers(model.identity.role);
    $("players").hidden = !allowed;
    if (!allowed) return;
    send({ type: "subscribe", channels: ["player"] });
    send({ type: "replay", from_seq: Math.max(1, (Number(lastSeq) || 0) - PLAYER_REPLAY) });
    renderPlayers();
  }

  function playerEvents(envelopes) {
    let changed = false;
    for (const env of envelopes || []) {
      if (core.applyPlayerEvent(model.players, env)) changed = true;
    }
    return changed;
  }

  function renderPlayers() {
    const list = $("player-list");
    const rows = core.playerRows(model.players, now());
    list.replaceChildren(...rows.map((row) => {
      const item = el("li", row.seated ? "player seated" : "player");
      item.append(el("span", "machine-name", core.machineName(row.machine)),
        el("span", "player-text", row.text));
      return item;
    }));
    $("players-empty").hidden = rows.length > 0;
  }

  // -- the model ---------------------------------------------------------------------------------

  function now() {
    return Date.now() + model.clockOffset;
  }

  function keyOf(alert) {
    return alert.machine || "gateway";
  }

  function index(alert) {
    const key = keyOf(alert);
    if (!model.byMachine.has(key)) model.byMachine.set(key, new Set());
    model.byMachine.get(key).add(alert.seq);
  }

  function unindex(alert) {
    const set = model.byMachine.get(keyOf(alert));
    if (set) set.delete(alert.seq);
  }

  // A full state (welcome, resync, reconnect): the same keyed patching as a delta, for every
  // machine that had or has an alert, so tiles keep their places.
  function loadState(state, serverTime) {
    const at = core.parseTime(serverTime);
    if (at !== null) model.clockOffset = at - Date.now();
    const touched = new Set(model.byMachine.keys());
    model.alerts = new Map();
    model.byMachine = new Map();
    for (const alert of state.alerts) {
      model.alerts.set(alert.seq, alert);
      index(alert);
      touched.add(keyOf(alert));
    }
    model.version = state.version;
    model.resyncing = false;
    model.uplink = state.uplink;
    const first = tiles.size === 0;
    for (const machine of touched) patchMachine(machine);
    if (first) {
      resort(true);
      hold();  // someone is looking at a board that just appeared: leave it still
    }
    renderBanner();
    renderCounts();
  }

  function applyDelta(delta) {
    if (model.resyncing) return;
    const at = core.parseTime(delta.time);
    if (at !== null) model.clockOffset = at - Date.now();
    if (delta.base > model.version) {
      // A delta was missed (the connection hiccuped, or a bug): ask for the whole state.
      model.resyncing = true;
      send({ type: "resync" });
      return;
    }
    const touched = new Set();
    for (const change of delta.changes) {
      if (change.v <= model.version) continue;
      if (change.op === "closed") {
        const gone = model.alerts.get(change.seq);
        if (gone) {
          unindex(gone);
          model.alerts.delete(change.seq);
          touched.add(keyOf(gone));
        }
        if (pending && pending.seq === change.seq && !pending.sent) {
          $("confirm-note").textContent = "This alert has just been cleared; nothing to do.";
          $("confirm-yes").disabled = true;
        }
      } else {
        const old = model.alerts.get(change.alert.seq);
        if (old) unindex(old);
        model.alerts.set(change.alert.seq, change.alert);
        index(change.alert);
        touched.add(keyOf(change.alert));
        if (change.op === "opened" && core.LOUD_KINDS.has(change.alert.kind)) {
          flashing.set(change.alert.seq, Date.now() + 30000);
          beep();
        }
      }
    }
    model.version = Math.max(model.version, delta.version);
    for (const machine of touched) patchMachine(machine);
    renderCounts();
  }

  function alertsOf(machine) {
    const seqs = model.byMachine.get(machine);
    if (!seqs) return [];
    return [...seqs].map((seq) => model.alerts.get(seq)).filter(Boolean);
  }

  // -- tiles -------------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function makeTile(machine, info) {
    const node = el("article", "tile");
    node.dataset.machine = machine;
    node.dataset.bank = core.bankOf(machine);
    const head = el("div", "tile-head");
    const symbol = el("span", "symbol");
    symbol.setAttribute("aria-hidden", "true");
    const kind = el("span", "kind");
    const age = el("span", "age");
    head.append(symbol, kind, age);
    const name = el("div", "machine-name", core.machineName(machine === "gateway" ? null
      : machine, info));
    const detail = el("div", "detail");
    const extra = el("div", "extra");
    const actions = el("div", "tile-actions");
    const ack = el("button", "ack-button", "Acknowledge");
    ack.type = "button";
    const history = el("button", "history-button", "History");
    history.type = "button";
    history.setAttribute("aria-label", "History of " + name.textContent);
    // The alert under the finger is fixed when it comes down; the click (at pointerup, or from
    // the keyboard) acts on it. Both buttons are handled on the tile, so a click whose
    // Acknowledge was hidden meanwhile (the alert was cleared) is still answered, and never
    // taken as a tap on History, which then sits where Acknowledge was.
    node.addEventListener("pointerdown", (event) => {
      const tile = tiles.get(machine);
      if (!tile) return;
      tile.pressed = event.target.closest(".ack-button")
        ? { seq: tile.seq, at: Date.now(), changedAt: tile.changedAt } : null;
    });
    node.addEventListener("click", (event) => {
      const tile = tiles.get(machine);
      if (!tile) return;
      const pressed = tile.pressed && Date.now() - tile.pressed.at < PRESS_MS ? tile.pressed : null;
      tile.pressed = null;
      if (pressed || event.target.closest(".ack-button")) {
        tapAcknowledge(tile, pressed || { seq: tile.seq, at: Date.now(),
          changedAt: tile.changedAt }, event);
      } else if (event.target.closest(".history-button")) {
        openHistory(machine);
      }
    });
    actions.append(ack, history);
    node.append(head, name, detail, extra, actions);
    return { node, symbol, kind, age, name, detail, extra, ack, history, seq: null,
      changedAt: 0, cleared: false, shownKind: null, pressed: null };
  }

  // Bring one machine's tile up to date in place: the tile is created (at the end) if new, and
  // becomes a "cleared" placeholder when the machine has no open alert left.
  function patchMachine(machine) {
    const alerts = alertsOf(machine);
    const worst = core.worstAlert(alerts);
    let tile = tiles.get(machine);
    if (!tile) {
      if (!worst) return;
      tile = makeTile(machine, worst.machine_info);
      tiles.set(machine, tile);
      applyFilter(tile);
      $("board").appendChild(tile.node);
      needsSort = true;
    }
    const seq = worst ? worst.seq : null;
    if (seq !== tile.seq) {
      tile.seq = seq;
      tile.changedAt = Date.now();
      tile.node.dataset.changedAt = String(tile.changedAt);
      if (tile.shownKind !== (worst && worst.kind)) needsSort = true;
    }
    const node = tile.node;
    if (!worst) {
      tile.cleared = true;
      needsSort = true;
      node.className = "tile cleared";
      delete node.dataset.alert;
      setText(tile.symbol, "\u2713");
      setText(tile.kind, "Cleared");
      setText(tile.detail, "No open alerts");
      setText(tile.extra, "");
      tile.age.removeAttribute("data-opened");
      setText(tile.age, "");
      setAckSlot(tile, false, "Cleared", "Nothing to acknowledge: " + tile.name.textContent +
        " is cleared");
      tile.shownKind = null;
      node.setAttribute("aria-label", tile.name.textContent + ": cleared");
      return;
    }
    tile.cleared = false;
    tile.shownKind = worst.kind;
    node.dataset.alert = String(worst.seq);
    let className = "tile kind-" + worst.kind + (worst.acknowledged_by ? " acknowledged" : "");
    const until = flashing.get(worst.seq);
    if (until && until > Date.now() && !worst.acknowledged_by) className += " flash";
    if (node.className !== className) node.className = className;
    setText(tile.symbol, core.KIND_SYMBOLS[worst.kind] || "!");
    setText(tile.kind, core.KIND_LABELS[worst.kind] || worst.kind);
    setText(tile.detail, core.describe(worst));
    const opened = core.parseTime(worst.opened);
    if (opened !== null) tile.age.dataset.opened = String(opened);
    setText(tile.age, opened === null ? "" : core.formatAge((now() - opened) / 1000));
    const others = alerts.length - 1;
    let extra = "";
    if (worst.acknowledged_by) {
      const when = core.parseTime(worst.acknowledged_at);
      extra = "Acknowledged by " + worst.acknowledged_by +
        (when === null ? "" : " at " + core.clockTime(when, model.timeZone)) +
        " \u2014 stays until " + (core.STAYS_UNTIL[worst.kind] || "the machine clears it");
    } else if (others > 0) {
      extra = "+ " + others + " more";
    }
    setText(tile.extra, extra);
    const canAck = Boolean(model.identity && core.canAcknowledge(model.identity.role, worst));
    setAckSlot(tile, canAck, canAck ? "Acknowledge" : "Acknowledged", canAck
      ? "Acknowledge " + (core.KIND_LABELS[worst.kind] || worst.kind).toLowerCase() + " at " +
        tile.name.textContent
      : "Already acknowledged: " + tile.name.textContent);
    node.setAttribute("aria-label", tile.name.textContent + ": " +
      (core.KIND_LABELS[worst.kind] || worst.kind) + ", " + core.describe(worst) +
      (worst.acknowledged_by ? ", acknowledged by " + worst.acknowledged_by : ""));
  }

  // The Acknowledge slot keeps its place while the tile shows something a finger may be on its
  // way to: hiding it would slide History under a finger aimed at Acknowledge. With nothing to
  // acknowledge (cleared, or acknowledged meanwhile) it stays, inert, and a tap on it is answered
  // (tapAcknowledge). Only a role that can never acknowledge has no slot.
  function setAckSlot(tile, active, text, label) {
    const role = model.identity && model.identity.role;
    tile.ack.hidden = role !== "attendant" && role !== "supervisor";
    tile.ack.disabled = !connected;
    tile.ack.setAttribute("aria-disabled", String(!active));
    tile.ack.classList.toggle("inert", !active);
    setText(tile.ack, text);
    tile.ack.setAttribute("aria-label", label);
  }

  // Put the tiles in board order and drop the cleared ones: only when nobody is touching the
  // board (or on the Sort button), and taps just after are refused (see the top of the file).
  // Arms the tap guard only if a tile that was on screen moved: the first sort of a board that
  // just appeared, or one that changed nothing, moves nothing under a finger.
  function resort(firstPaint) {
    const board = $("board");
    const before = new Map([...board.children].map((node, i) => [node, i]));
    const worst = new Map();
    for (const [machine, tile] of tiles) {
      if (tile.cleared) {
        tile.node.remove();
        tiles.delete(machine);
      } else {
        worst.set(machine, model.alerts.get(tile.seq));
      }
    }
    const order = core.tileOrder(worst);
    let position = 0;
    let moved = false;
    for (const machine of order) {
      const node = tiles.get(machine).node;
      if (board.children[position] !== node) board.insertBefore(node, board.children[position]);
      moved = moved || (before.has(node) && before.get(node) !== position);
      position += 1;
    }
    if (moved && firstPaint !== true) {
      sortedAt = Date.now();
      document.body.dataset.sortedAt = String(sortedAt);
    }
    needsSort = false;
    setSortButton(false);
  }

  // Sort is offered only when tiles wait out of order; otherwise it says the board is already
  // sorted (a greyed-out "Sort" read as broken on the floor).
  function setSortButton(offered) {
    const sort = $("sort");
    if (sort.disabled === !offered && sort.textContent) return;
    sort.disabled = !offered;
    sort.textContent = offered ? "Sort" : "Sorted";
    const words = offered ? "Sort the board now: some tiles are out of order"
      : "Board already sorted: nothing to do";
    sort.setAttribute("aria-label", offered ? words : "Board already sorted");
    sort.title = words;
  }

  function maybeResort() {
    setSortButton(needsSort);
    if (!needsSort || Date.now() < heldUntil || pending || !$("machine").hidden) return;
    resort();
  }

  // -- acknowledging -----------------------------------------------------------------------------

  function refuse(why, text, event) {
    toast(text);
    document.body.dataset.refused = String(Number(document.body.dataset.refused || 0) + 1);
    document.body.dataset.refusedWhy = why;
    if (event) event.preventDefault();
  }

  // The alert under the finger was cleared before the tap was taken. The tile may show another
  // alert by now: say so, so the person reads it before tapping again (same reason either way).
  function refuseGone(tile, pressed, event) {
    const another = tile.seq !== null && tile.seq !== pressed.seq;
    refuse("alert gone", another
      ? "The alert under your finger was cleared by the machine, and this tile now shows " +
        "another one: check it and tap again."
      : "That alert has just been cleared by the machine: nothing to acknowledge.", event);
  }

  // `pressed`: the alert the tile showed when the finger came down, and when.
  function tapAcknowledge(tile, pressed, event) {
    if (!connected) return;  // the buttons are disabled and the board says why
    if (pressed.seq === null) {
      refuseGone(tile, pressed, event);
      return;
    }
    // Tiles moved (a re-sort or a filter) just before the finger came down: the point tapped
    // may show another machine than the one read. Refuse rather than guess.
    if (pressed.at - sortedAt < GUARD_MS) {
      refuse("board re-sorted", "The board was re-ordered under your finger. " +
        "Check the tile and tap again.", event);
      return;
    }
    const alert = model.alerts.get(pressed.seq);
    if (!alert) {
      refuseGone(tile, pressed, event);
      return;
    }
    if (alert.acknowledged_by) {
      refuse("already acknowledged", "Already acknowledged by " + alert.acknowledged_by +
        ": nothing to do.", event);
      return;
    }
    openConfirm(alert, pressed.at - pressed.changedAt < SWITCH_WARN_MS);
  }

  function alertWords(alert) {
    const opened = core.parseTime(alert.opened);
    return (core.KIND_LABELS[alert.kind] || alert.kind) + " \u2014 " + core.describe(alert) +
      " \u2014 " + core.machineName(alert.machine, alert.machine_info) +
      (opened === null ? "" : ", since " + core.clockTime(opened, model.timeZone));
  }

  // `switched`: the tile showed another alert until just before the tap; say so, so the person
  // checks the words before "Yes" (the confirmation is bound to this alert's id either way).
  function openConfirm(alert, switched) {
    pending = { seq: alert.seq, machine: keyOf(alert), sent: false };
    const box = $("confirm");
    box.dataset.alert = String(alert.seq);
    box.dataset.switched = String(Boolean(switched));
    $("confirm-text").textContent = alertWords(alert);
    $("confirm-note").textContent = (switched
      ? "This tile changed just before your tap: check this is the alert you meant. " : "") +
      (core.CLOSED_BY_ACK.includes(alert.kind) ? "This clears it from the board."
        : "It stays on the board, marked with your name, until " +
          (core.STAYS_UNTIL[alert.kind] || "the machine clears it") + ".");
    const yes = $("confirm-yes");
    yes.disabled = true;
    yes.textContent = "Yes, acknowledge";
    $("confirm-no").disabled = false;
    box.hidden = false;
    // Armed a moment later: a double tap on the tile cannot confirm by itself.
    setTimeout(() => {
      if (pending && pending.seq === alert.seq && !pending.sent) yes.disabled = false;
    }, CONFIRM_ARM_MS);
  }

  function confirmAcknowledge() {
    if (!pending || pending.sent) return;
    if (!send({ type: "ack", alert_seq: pending.seq })) {
      $("confirm-note").textContent = "Not connected to the gateway: not acknowledged.";
      return;
    }
    pending.sent = true;
    $("confirm-yes").disabled = true;
    $("confirm-yes").textContent = "Sending…";
  }

  function closeConfirm() {
    pending = null;
    $("confirm").hidden = true;
    delete $("confirm").dataset.alert;
    heldUntil = Date.now() + HOLD_MS;
  }

  function ackResult(message) {
    const alert = model.alerts.get(message.alert_seq);
    const words = alert ? alertWords(alert) : "alert " + message.alert_seq;
    document.body.dataset.ackResult = JSON.stringify({ seq: message.alert_seq, ok: message.ok,
      reason: message.reason || null });
    if (pending && pending.seq === message.alert_seq) closeConfirm();
    toast(message.ok ? "Acknowledged: " + words : "Not acknowledged: " + message.reason);
  }

  // -- machine history ---------------------------------------------------------------------------

  function openHistory(machine) {
    if (machine === "gateway" || !send({ type: "history", machine: machine })) return;
    $("machine-title").textContent = core.machineName(machine);
    $("machine-history").replaceChildren(el("li", "note", "Loading…"));
    $("machine").hidden = false;
  }

  function showHistory(message) {
    const list = $("machine-history");
    const items = message.alerts.map((alert) => {
      const item = el("li", "kind-" + alert.kind);
      const opened = core.parseTime(alert.opened);
      const closed = alert.closed ? core.parseTime(alert.closed) : null;
      item.textContent = (core.KIND_LABELS[alert.kind] || alert.kind) + ": " +
        core.describe(alert) + (opened === null ? "" : ", " +
        core.clockTime(opened, model.timeZone)) +
        (alert.acknowledged_by ? ", acknowledged by " + alert.acknowledged_by : "") +
        (closed === null ? " (open)" : ", cleared " + core.clockTime(closed, model.timeZone));
      return item;
    });
    list.replaceChildren(...(items.length ? items : [el("li", "note", "Nothing recent.")]));
  }

  // -- filters, counts, banner -------------------------------------------------------------------

  function applyFilter(tile) {
    tile.node.hidden = bankFilter !== null && tile.node.dataset.bank !== bankFilter;
  }

  function renderCounts() {
    const open = model.alerts.size;
    // Not a tile: the message floats over the board, so it never takes a tile's place.
    $("empty").hidden = open > 0 || model.identity === null;
    const handpays = [...model.alerts.values()].filter((a) => a.kind === "handpay").length;
    setText($("count"), (open === 1 ? "1 open alert" : open + " open alerts") +
      (handpays ? " \u00B7 " + handpays + " handpay" + (handpays === 1 ? "" : "s") : ""));
    const banks = new Map();
    for (const alert of model.alerts.values()) {
      const bank = core.bankOf(alert.machine);
      banks.set(bank, (banks.get(bank) || 0) + 1);
    }
    const nav = $("filters");
    nav.hidden = model.identity === null;
    const wanted = [null, ...[...banks.keys()].sort()];
    if (bankFilter !== null && !banks.has(bankFilter)) wanted.push(bankFilter);
    const existing = new Map([...nav.children].map((b) => [b.dataset.bank || "", b]));
    for (const bank of wanted) {
      let button = existing.get(bank || "");
      if (!button) {
        button = el("button", "filter");
        button.type = "button";
        button.dataset.bank = bank || "";
        button.addEventListener("click", () => setFilter(bank));
        nav.appendChild(button);
      }
      existing.delete(bank || "");
      const count = bank === null ? open : (banks.get(bank) || 0);
      setText(button, (bank === null ? "All" : core.bankName(bank)) + " (" + count + ")");
      button.setAttribute("aria-pressed", String(bankFilter === bank));
    }
    for (const stale of existing.values()) stale.remove();
  }

  function setFilter(bank) {
    bankFilter = bank;
    for (const tile of tiles.values()) applyFilter(tile);
    sortedAt = Date.now();  // tiles moved: the guard applies as after a re-sort
    renderCounts();
  }

  function renderBanner() {
    const banner = core.uplinkBanner(model.uplink, now(), model.timeZone);
    const box = $("uplink-banner");
    box.hidden = banner === null;
    box.classList.toggle("frozen", Boolean(model.uplink && model.uplink.state === "frozen"));
    setText($("uplink-text"), banner ? banner.text : "");
    setText($("uplink-detail"), banner && banner.detail ? "Details: " + banner.detail : "");
    box.title = banner && banner.detail ? banner.detail : "";
  }

  function tick() {
    for (const age of document.querySelectorAll(".age[data-opened]")) {
      setText(age, core.formatAge((now() - Number(age.dataset.opened)) / 1000));
    }
    for (const [seq, until] of flashing) {
      if (until <= Date.now()) {
        flashing.delete(seq);
        const node = document.querySelector('.tile[data-alert="' + seq + '"]');
        if (node) node.classList.remove("flash");
      }
    }
    if (model.uplink && model.uplink.connected === false) renderBanner();
    if (!$("players").hidden) renderPlayers();
    maybeResort();
    const loginAt = Number(sessionStorage.getItem(LOGIN_AT_KEY));
    if (model.identity && loginAt && Date.now() - loginAt > model.sessionMaxMs) {
      logout(sessionEnded());
    }
  }

  function sessionEnded() {
    return "Your session has ended (shared tablets log out after " +
      core.formatAge(model.sessionMaxMs / 1000) + "). Log in again.";
  }

  function setStatus(text, kind) {
    const status = $("status");
    setText(status, text);
    status.className = "status " + kind;
  }

  function toast(text) {
    const box = $("toast");
    box.textContent = text;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  // -- login -------------------------------------------------------------------------------------

  function showLogin(problem) {
    $("login").hidden = false;
    $("logout").hidden = true;
    $("unreachable").hidden = true;
    $("login-error").textContent = problem || "";
    $("token").focus();
    setStatus("Not logged in", "down");
  }

  function hideLogin() {
    $("login").hidden = true;
    $("logout").hidden = false;
  }

  function logout(problem) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(LOGIN_AT_KEY);
    sessionStorage.removeItem(LOGIN_ID_KEY);
    stopped = true;
    clearTimeout(retryTimer);
    clearInterval(countdown);
    if (socket) socket.close(1000);
    model.identity = null;
    model.alerts = new Map();
    model.byMachine = new Map();
    tiles.clear();
    $("board").replaceChildren();
    $("empty").hidden = true;
    if (pending) closeConfirm();
    $("machine").hidden = true;
    showLogin(problem);
  }

  function hold() {
    heldUntil = Date.now() + HOLD_MS;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      sessionStorage.setItem(LOGIN_AT_KEY, String(Date.now()));
      sessionStorage.removeItem(LOGIN_ID_KEY);  // a fresh login, not the continuation of one
      $("token").value = "";
      enableSound();
      if (socket) socket.close();
      attempt = 0;
      connect();
    });
    $("logout").addEventListener("click", () => logout(""));
    $("confirm-yes").addEventListener("click", confirmAcknowledge);
    $("confirm-no").addEventListener("click", closeConfirm);
    $("machine-close").addEventListener("click", () => {
      $("machine").hidden = true;
      hold();
    });
    $("sort").addEventListener("click", resort);
    for (const type of ["pointerdown", "pointermove", "wheel", "scroll", "keydown"]) {
      document.addEventListener(type, hold, { passive: true, capture: true });
    }
    document.addEventListener("click", enableSound);
    setInterval(tick, 1000);
    connect();
  });
})();

// The alert board page: log in with a staff token, show the open alerts pushed by the feed,
// acknowledge them, and keep reconnecting. No framework, no build step, no external resource
// (the server's Content-Security-Policy allows only this origin). Text from the feed is only ever
// set with textContent, never parsed as HTML.
"use strict";

(function () {
  const core = window.BoardCore;
  const TOKEN_KEY = "casino-feed-token";
  const $ = (id) => document.getElementById(id);

  const view = {
    state: null,          // last <state> from welcome/alerts
    previous: null,       // alerts of the state before, to spot new ones
    identity: null,       // {name, role}
    clockOffset: 0,       // gateway clock - browser clock, ms
    flashing: new Map(),  // alert seq -> until (ms)
  };
  let socket = null;
  let attempt = 0;
  let retryTimer = null;
  let stopped = false;    // after an authentication failure: wait for a new token
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
    stopped = false;
    setStatus("Connecting…", "connecting");
    socket = new WebSocket(feedUrl());
    socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: token }));
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      handle(message);
    };
    socket.onclose = (event) => {
      socket = null;
      if (stopped) return;
      if (event.code === 1008 && /^authentication/.test(event.reason || "")) {
        return;  // handled by the error message before it
      }
      scheduleReconnect(event.code === 1008 ? "dropped: " + event.reason : "connection lost");
    };
  }

  function scheduleReconnect(why) {
    const delay = core.backoffDelay(attempt, Math.random(), 1000, 30000) + 250;
    attempt += 1;
    const at = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      setStatus("Gateway " + why + ". Reconnecting in " + left + " s…", "down");
    };
    tick();
    const countdown = setInterval(tick, 1000);
    retryTimer = setTimeout(() => {
      clearInterval(countdown);
      connect();
    }, delay);
  }

  function handle(message) {
    switch (message.type) {
      case "welcome":
        attempt = 0;
        view.identity = { name: message.name, role: message.role };
        view.previous = null;
        hideLogin();
        setStatus("Connected as " + message.name + " (" + message.role + ")", "up");
        applyState(message.state, message.time);
        break;
      case "alerts":
        applyState(message.state, message.time);
        break;
      case "events":
        break;  // the board subscribes to no events: `alerts` carries everything it shows
      case "ack_result":
        if (!message.ok) toast("Not acknowledged: " + message.reason);
        break;
      case "error":
        if (message.code === "auth_failed" || message.code === "auth_required") {
          stopped = true;
          sessionStorage.removeItem(TOKEN_KEY);
          showLogin(message.code === "auth_failed" ? "Unknown token." : message.message);
        } else {
          toast(message.message);
        }
        break;
      default:
        break;
    }
  }

  function acknowledge(seq, button) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    button.disabled = true;
    button.textContent = "Sending…";
    socket.send(JSON.stringify({ type: "ack", alert_seq: seq }));
  }

  // -- rendering ---------------------------------------------------------------------------------

  function now() {
    return Date.now() + view.clockOffset;
  }

  function applyState(state, serverTime) {
    const at = core.parseTime(serverTime);
    if (at !== null) view.clockOffset = at - Date.now();
    const fresh = core.newLoudAlerts(view.previous, state.alerts);
    view.previous = state.alerts;
    view.state = state;
    for (const seq of fresh) view.flashing.set(seq, Date.now() + 30000);
    if (fresh.length) beep();
    render();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function render() {
    const state = view.state;
    if (!state) return;
    renderBanner();

    const board = $("board");
    board.replaceChildren();
    const groups = core.groupByMachine(state.alerts);
    $("count").textContent = state.alerts.length === 1 ? "1 open alert"
      : state.alerts.length + " open alerts";
    if (!groups.length) {
      board.appendChild(el("p", "empty", "No open alerts."));
      return;
    }
    for (const group of groups) {
      const section = el("section", "machine");
      section.appendChild(el("h2", null, group.machine));
      const list = el("ul", "alerts");
      for (const alert of group.alerts) list.appendChild(renderAlert(alert));
      section.appendChild(list);
      board.appendChild(section);
    }
  }

  // Plain words for the floor; the uplink's technical reason in small print and as a tooltip.
  function renderBanner() {
    const banner = core.uplinkBanner(view.state.uplink, now());
    const box = $("uplink-banner");
    box.hidden = banner === null;
    $("uplink-text").textContent = banner ? banner.text : "";
    $("uplink-detail").textContent = banner && banner.detail ? "Details: " + banner.detail : "";
    box.title = banner && banner.detail ? banner.detail : "";
  }

  function renderAlert(alert) {
    const item = el("li", "alert kind-" + alert.kind);
    item.dataset.seq = String(alert.seq);
    const until = view.flashing.get(alert.seq);
    if (until && until > Date.now() && !alert.acknowledged_by) item.classList.add("flash");
    if (alert.acknowledged_by) item.classList.add("acknowledged");
    item.appendChild(el("span", "kind", core.KIND_LABELS[alert.kind] || alert.kind));
    item.appendChild(el("span", "detail", core.describe(alert)));
    const opened = core.parseTime(alert.opened);
    const age = el("span", "age", opened === null ? "" : core.formatAge((now() - opened) / 1000));
    if (opened !== null) age.dataset.opened = String(opened);
    item.appendChild(age);
    if (alert.acknowledged_by) {
      item.appendChild(el("span", "ack", "acknowledged by " + alert.acknowledged_by +
        (alert.ack_note ? " — " + alert.ack_note : "")));
    } else if (view.identity && core.canAcknowledge(view.identity.role, alert)) {
      const button = el("button", "ack-button", "Acknowledge");
      button.type = "button";
      button.addEventListener("click", () => acknowledge(alert.seq, button));
      item.appendChild(button);
    }
    return item;
  }

  function tickAges() {
    for (const age of document.querySelectorAll(".age[data-opened]")) {
      age.textContent = core.formatAge((now() - Number(age.dataset.opened)) / 1000);
    }
    for (const [seq, until] of view.flashing) {
      if (until <= Date.now()) {
        view.flashing.delete(seq);
        const item = document.querySelector('.alert[data-seq="' + seq + '"]');
        if (item) item.classList.remove("flash");
      }
    }
    if (view.state && view.state.uplink && view.state.uplink.connected === false) renderBanner();
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
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
    $("login-error").textContent = problem || "";
    $("token").focus();
    setStatus("Not logged in", "down");
  }

  function hideLogin() {
    $("login").hidden = true;
    $("logout").hidden = false;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      enableSound();
      if (socket) socket.close();
      attempt = 0;
      connect();
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      stopped = true;
      clearTimeout(retryTimer);
      if (socket) socket.close(1000);
      view.state = null;
      $("board").replaceChildren();
      showLogin("");
    });
    document.addEventListener("click", enableSound);
    setInterval(tickAges, 1000);
    connect();
  });
})();

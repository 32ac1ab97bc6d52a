"""Each state the floor meets, asserted in the DOM and ARIA and saved as a screenshot in
test-output/: a busy board on a tablet (800x1280) and on a phone (390x844), the platform down,
the gateway down, and too many failed logins (429)."""

from __future__ import annotations

import time

from .live import OUTPUT, BusyFloor, LiveFeed

SMALL_TARGETS = """() => [...document.querySelectorAll('button')].filter((b) => {
  if (b.offsetParent === null) return false;
  const rc = b.getBoundingClientRect();
  return rc.width < 48 || rc.height < 48;
}).map((b) => b.textContent)"""


# The header's visible parts: each one's box and whether its text is cut off.
HEADER_PARTS = """() => { const box = document.querySelector('header').getBoundingClientRect();
  return [...document.querySelectorAll('header > *')].filter((e) => e.offsetParent !== null)
  .map((e) => { const rc = e.getBoundingClientRect(); return { id: e.id || e.tagName,
  left: rc.left, right: rc.right, top: rc.top, bottom: rc.bottom, text: e.textContent,
  cut: e.scrollWidth > e.clientWidth + 1 || rc.top < box.top || rc.bottom > box.bottom }; }); }"""


def assert_header_fits(page, width: int) -> None:
    """The board's title is in the header at this width, and nothing in the header overlaps,
    leaves the screen or the header, or has its title or alert count cut off."""
    parts = page.evaluate(HEADER_PARTS)
    by_id = {p["id"]: p for p in parts}
    assert by_id.get("H1", {}).get("text") == "Alert board", parts
    assert not by_id["count"]["cut"] and not by_id["H1"]["cut"], parts
    for i, a in enumerate(parts):
        assert a["left"] >= 0 and a["right"] <= width, a
        for b in parts[i + 1:]:
            apart = (a["right"] <= b["left"] or b["right"] <= a["left"]
                     or a["bottom"] <= b["top"] or b["bottom"] <= a["top"])
            assert apart, (a, b)


def shot(page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name))


def log_in(page, url: str, token: str = "attendant-token") -> None:
    page.goto(url)
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", token)
    page.click("#login-form button")


def test_busy_board_on_a_tablet_and_a_phone(browser, page_problems, tmp_path):
    floor = BusyFloor(machines=160)
    with LiveFeed(tmp_path) as live:
        live.preload(floor, 520)
        tablet = page_problems(browser.new_page(viewport={"width": 800, "height": 1280}))
        log_in(tablet, live.url)
        tablet.wait_for_function("() => document.querySelectorAll('.tile').length >= 150")
        tiles = tablet.locator(".tile")
        count = tiles.count()
        # One tile per machine with an open alert, each labelled for a screen reader.
        machines = {a.machine for a in live.server.board.alerts}
        assert count == len(machines)
        assert tablet.evaluate("() => [...document.querySelectorAll('.tile')]"
                               ".every((t) => t.getAttribute('aria-label'))")
        assert tablet.get_attribute("main", "aria-label") == "Machines with open alerts"
        # Most severe first: every handpay tile before every other kind.
        kinds = tablet.evaluate("() => [...document.querySelectorAll('.tile')]"
                                ".map((t) => t.className.match(/kind-(\\w+)/)[1])")
        assert kinds == sorted(kinds, key=["handpay", "door", "tilt", "offline",
                                           "bufferOverflow"].index)
        # A handpay reads as one without colour: a word and a symbol.
        first = tablet.locator(".tile.kind-handpay").first
        assert first.locator(".kind").text_content() == "HANDPAY"
        assert first.locator(".symbol").text_content() == "$"
        assert "HANDPAY" in first.get_attribute("aria-label")
        # Plain words, no raw codes.
        texts = tablet.evaluate("() => [...document.querySelectorAll('.tile')]"
                                ".map((t) => t.innerText).join('\\n')")
        assert "_" not in texts and "bank-" not in texts
        # Bank filters with counts that add up.
        filters = tablet.locator("#filters button").all_text_contents()
        assert filters[0] == f"All ({len(live.server.board.alerts)})"
        assert sum(int(f.rsplit("(", 1)[1][:-1]) for f in filters[1:]) == \
            len(live.server.board.alerts)
        assert tablet.evaluate(SMALL_TARGETS) == []
        assert_header_fits(tablet, 800)
        shot(tablet, "board-busy-tablet.png")
        tablet.locator("#filters button", has_text="Bank C").click()
        visible = tablet.locator(".tile:visible")
        assert {b.get_attribute("data-machine").split("-")[1] for b in visible.all()} == {"c"}
        assert tablet.locator("#filters button", has_text="Bank C").get_attribute(
            "aria-pressed") == "true"

        phone = page_problems(browser.new_page(viewport={"width": 390, "height": 844}))
        log_in(phone, live.url)
        phone.wait_for_function("() => document.querySelectorAll('.tile').length >= 150")
        lefts = phone.evaluate("() => [...document.querySelectorAll('.tile')].slice(0, 10)"
                               ".map((t) => t.getBoundingClientRect().left)")
        assert len(set(lefts)) == 1, "one column on a phone"
        assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert phone.evaluate(SMALL_TARGETS) == []
        assert_header_fits(phone, 390)
        shot(phone, "board-busy-phone.png")
        assert page_problems.problems == []


def test_phone_header_keeps_the_title_and_sort_says_when_the_board_is_already_sorted(
        browser, page_problems, tmp_path):
    """Floor review: on a phone the header dropped the title, and a greyed-out Sort read as
    broken. The disabled Sort says the board is already in order (text, tooltip, ARIA), in full
    colour; it says "Sort" when new tiles wait at the end."""
    with LiveFeed(tmp_path) as live:
        for n in range(1, 6):
            live.append("tilt", {"kind": "bill_jam"}, port=f"bank-a-{n:02d}")
        phone = page_problems(browser.new_page(viewport={"width": 390, "height": 844}))
        log_in(phone, live.url)
        phone.wait_for_function("() => document.querySelectorAll('.tile').length == 5")
        assert_header_fits(phone, 390)
        sort = phone.locator("#sort")
        assert sort.is_disabled()
        assert sort.inner_text() == "Sorted"
        assert "already sorted" in sort.get_attribute("aria-label").lower()
        assert "already sorted" in sort.get_attribute("title").lower()
        assert phone.evaluate("() => getComputedStyle(document.getElementById('sort')).opacity")\
            == "1", "a disabled Sort must not look broken (greyed out)"
        shot(phone, "board-phone-header.png")
        # A new machine's tile waits at the end: Sort offers to put it in its place.
        live.append("handpayPending", {"amount": {"minor": 250000, "currency": "USD"}},
                    port="bank-b-01")
        phone.wait_for_function("() => !document.getElementById('sort').disabled")
        assert sort.inner_text() == "Sort"
        assert "sort the board now" in sort.get_attribute("aria-label").lower()
        assert_header_fits(phone, 390)
        shot(phone, "board-phone-header-sort.png")
        sort.click()
        phone.wait_for_function("() => document.getElementById('sort').disabled")
        assert sort.inner_text() == "Sorted"
        assert phone.locator(".tile").first.get_attribute("data-machine") == "bank-b-01/1"
        assert page_problems.problems == []


def test_platform_down_gateway_down_and_too_many_failed_logins(browser, page_problems,
                                                               tmp_path):
    with LiveFeed(tmp_path, auth_failures_per_minute=2) as live:
        live.append("handpayPending", {"amount": {"minor": 250000, "currency": "USD"}},
                    port="bank-a-03")
        live.append("doorOpened", {"door": "drop"}, port="bank-b-11")
        live.append("tilt", {"kind": "printer_paper_out"}, port="bank-c-02")
        live.status["uplink_status"] = {
            "state": "down", "connected": False, "since": time.time() - 300,
            "reason": "never connected since start: connect timed out during tls handshake"}
        page = page_problems(browser.new_page(viewport={"width": 800, "height": 1280}))
        log_in(page, live.url)
        page.wait_for_function("() => document.querySelectorAll('.tile').length === 3")
        banner = page.wait_for_selector("#uplink-banner:not([hidden])")
        assert banner.get_attribute("role") == "alert"
        text = page.locator("#uplink-text").text_content()
        assert text.startswith("Platform not connected since the gateway started at ")
        assert "(no answer from the platform), 5 min ago" in text
        shot(page, "board-uplink-down.png")
        # Frozen: connected but acknowledging nothing; pushed as a `status` message.
        live.status["uplink_status"] = {
            "state": "frozen", "connected": False, "since": time.time() - 20,
            "reason": "connected, but the platform has acknowledged nothing for over 10 s"}
        page.wait_for_selector("#uplink-banner.frozen")
        assert page.locator("#uplink-text").text_content().startswith(
            "Platform not answering since ")
        live.status["uplink_status"] = {
            "state": "down", "connected": False, "since": time.time() - 300,
            "reason": "never connected since start: connect timed out during tls handshake"}
        page.wait_for_selector("#uplink-banner:not(.frozen)")

        # The gateway goes away: the whole page says so; nothing on the board can be pressed.
        live.stop_feed()
        overlay = page.wait_for_selector("#unreachable:not([hidden])")
        assert overlay.get_attribute("role") == "alertdialog"
        assert page.locator("#unreachable-title").text_content() in (
            "Gateway unreachable", "Connection to the gateway lost")
        assert all(b.is_disabled() for b in page.locator(".tile button").all())
        shot(page, "board-gateway-down.png")
        live.start_feed()
        page.wait_for_selector("#unreachable", state="hidden", timeout=45000)

        # Someone tries tokens: after the limit the page says why and how long to wait.
        other = page_problems(browser.new_page(viewport={"width": 800, "height": 1280}))
        for _ in range(2):
            log_in(other, live.url, "wrong-token")
            other.wait_for_function("() => document.getElementById('login-error').textContent"
                                    " === 'Unknown token.'")
        log_in(other, live.url, "attendant-token")
        error = other.wait_for_function(
            "() => { const t = document.getElementById('login-error').textContent;"
            " return /^Too many failed logins/.test(t) ? t : null; }").json_value()
        assert error.startswith("Too many failed logins from this tablet. Wait ")
        assert error.endswith(" s, then log in again.")
        assert other.locator("#login-form button").is_disabled()
        assert other.get_attribute("#login-error", "role") == "alert"
        shot(other, "board-429.png")
        assert page_problems.problems == []


def test_a_shared_tablet_session_expires(browser, page_problems, tmp_path):
    with LiveFeed(tmp_path, session_max_s=2.0) as live:
        live.append("tilt", {"kind": "bill_jam"}, port="bank-a-01")
        page = page_problems(browser.new_page(viewport={"width": 800, "height": 1280}))
        log_in(page, live.url)
        page.wait_for_selector(".tile")
        error = page.wait_for_function(
            "() => { const t = document.getElementById('login-error').textContent;"
            " return t.startsWith('Your session has ended') ? t : null; }",
            timeout=10000).json_value()
        assert "log out after" in error
        assert page.evaluate("sessionStorage.getItem('casino-feed-token')") is None
        assert page.locator(".tile").count() == 0
        assert page_problems.problems == []


def test_a_missed_delta_makes_the_page_resync(browser, page_problems, tmp_path):
    with LiveFeed(tmp_path) as live:
        live.append("tilt", {"kind": "bill_jam"}, port="bank-a-01")
        page = page_problems(browser.new_page(viewport={"width": 800, "height": 1280}))
        received: list[str] = []
        page.on("websocket", lambda ws: ws.on(
            "framereceived", lambda payload: received.append(str(payload))))
        log_in(page, live.url)
        page.wait_for_selector(".tile")

        async def lose_a_change() -> None:   # as if a delta had gone missing on the way
            live.server.board.version += 1

        live.call(lose_a_change)
        live.append("doorOpened", {"door": "main"}, port="bank-z-01")
        # The delta's base is above the page's version: it asks for the whole state, and the
        # door arrives with the snapshot.
        page.wait_for_selector('.tile.kind-door[data-machine="bank-z-01/1"]')
        assert any('"type":"alerts_snapshot"' in frame for frame in received)
        assert page.locator(".tile").count() == 2
        assert page_problems.problems == []

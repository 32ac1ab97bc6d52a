"""The board's player view in headless Chromium: an attendant sees who is at which machine
(seated cards, recent reads, a removal taking a player away, live and after a reload); a viewer
gets no player view at all."""

from __future__ import annotations

from .live import LiveFeed
from .test_board_states import log_in, shot

ANNA = {"card_id": "a1" * 16, "key_id": "1210c263", "medium": "magstripe"}
BEN = {"card_id": "b2" * 16, "key_id": "1210c263", "medium": "rfid"}


def test_attendant_sees_players_viewer_does_not(browser, page_problems, tmp_path):
    with LiveFeed(tmp_path) as live:
        live.append("cardInserted", ANNA, port="bank-a-03")
        live.append("cardRead", BEN, port="bank-b-07")
        live.append("cardBadRead", {"medium": "magstripe", "reason": "x"}, port="bank-a-04")
        page = page_problems(browser.new_page(viewport={"width": 800, "height": 1280}))
        log_in(page, live.url)
        page.wait_for_function("() => document.querySelectorAll('#player-list li').length == 2")
        rows = page.locator("#player-list li").all_inner_texts()
        assert "Bank A 03" in rows[0] and "Player a1a1a1a1, card in for" in rows[0]
        assert "Bank B 07" in rows[1] and "Player b2b2b2b2, card read" in rows[1]
        assert "a1a1a1a1a1" not in page.inner_text("body")  # a pseudonym, not the whole id
        # Live: the card comes out, another player sits down elsewhere.
        live.append("cardRemoved", {**ANNA, "reason": "removed", "inserted_for_s": 60.0},
                    port="bank-a-03")
        live.append("cardInserted", BEN, port="bank-c-01")
        page.wait_for_function("() => [...document.querySelectorAll('#player-list li')]"
                               ".map((li) => li.innerText).join('|').includes('Bank C 01')")
        rows = page.locator("#player-list li").all_inner_texts()
        assert len(rows) == 2 and not any("Bank A 03" in r for r in rows)
        shot(page, "board-players.png")
        # After a reload the view is rebuilt from the replay.
        page.reload()
        page.wait_for_function("() => document.querySelectorAll('#player-list li').length == 2")
        assert page_problems.problems == []

        viewer = page_problems(browser.new_page())
        log_in(viewer, live.url, "viewer-token")
        viewer.wait_for_selector("#status.up")
        assert viewer.locator("#players").is_hidden()
        assert viewer.locator("#player-list li").count() == 0
        assert page_problems.problems == []


def test_a_card_reader_offline_is_a_tile_in_its_own_words_until_it_is_back(
        browser, page_problems, tmp_path):
    """Floor review: a reader unplugged gave no alert, so nobody knew players there could not
    be rated. It is a tile of the machine it sits beside, below that machine's own faults."""
    with LiveFeed(tmp_path) as live:
        gone = {"reader": "reader-a-04", "reason": "read failed: [Errno 5] Input/output error"}
        live.append("cardReaderOffline", gone, port="bank-a-04")
        page = page_problems(browser.new_page(viewport={"width": 800, "height": 1280}))
        log_in(page, live.url, "viewer-token")  # every role sees it: it carries no player
        tile = page.locator('.tile[data-machine="bank-a-04/1"]')
        tile.wait_for()
        assert "kind-reader" in tile.get_attribute("class")
        assert tile.locator(".kind").inner_text() == "Card reader offline"
        assert "Players here cannot be rated (reader reader-a-04)" in tile.inner_text()
        assert "Card reader offline" in tile.get_attribute("aria-label")
        shot(page, "board-card-reader-offline.png")
        # The machine's own fault outranks it on the tile; the reader coming back clears it.
        live.append("tilt", {"kind": "bill_jam"}, port="bank-a-04")
        page.wait_for_function("() => document.querySelector('.tile[data-machine=\"bank-a-04/1\"]"
                               " .kind').textContent === 'Fault'")
        assert "+ 1 more" in tile.inner_text()
        live.append("cardReaderOnline", {"reader": "reader-a-04"}, port="bank-a-04")
        page.wait_for_function("() => !document.querySelector('.tile[data-machine=\"bank-a-04/1\"]')"
                               ".innerText.includes('+ 1 more')")
        assert page_problems.problems == []

"""The real thing: `streamlit run` on a free loopback port, Debian's Chromium through Playwright."""
from __future__ import annotations

import base64
import hashlib

import pytest
from sqlmodel import select

from feedback_app import browser
from pickloop.db import read_session
from pickloop.schema import Assignment, Candidate, Comparison
from tests.feedback_app.helpers import count, judgements, make_sets

IMAGES_JS = "() => [...document.querySelectorAll('.pl-set:not([hidden]) img')].map(e => e.src)"


def shown_image_shas(page) -> list[str]:
    """sha256 of each candidate image on screen, left to right (images are inline data: URLs)."""
    return [hashlib.sha256(base64.b64decode(src.split(",", 1)[1])).hexdigest() for src in page.evaluate(IMAGES_JS)]


@pytest.mark.browser
@pytest.mark.slow
def test_rate_five_sets_with_clicks_and_hotkeys(ctx, home, alice):
    make_sets(ctx, 8)
    # (how, what): click a candidate's image / its Pick button / press its number / press T for a tie;
    # "double" double-clicks an image: its second click must not answer the set that appears.
    actions = [("click", 2), ("key", 1), ("double", 4), ("button", 3), ("key", "T")]
    seen: dict[str, tuple[str, int | str, list[str]]] = {}
    with browser.app_server(home=home) as url, browser.chromium_page() as page:
        browser.sign_in(page, url, name="alice", token=alice[1])
        key = browser.wait_for_set(page, None, n=4)
        for how, what in actions:
            seen[key] = (how, what, shown_image_shas(page))
            shown = browser.visible_set(page)
            if how == "click":
                shown.locator(".pl-cand").nth(what - 1).click()
            elif how == "double":
                shown.locator(".pl-cand").nth(what - 1).dblclick()
            elif how == "button":
                shown.get_by_role("button", name=f"Pick {what}", exact=True).click()
            else:
                browser.focus_page(page)
                page.keyboard.press(str(what))
            last, key = key, browser.wait_for_set(page, key, n=4)
        # U takes back the tie: the tied set comes back on screen, and is picked this time.
        browser.wait_for_labels(page, 5)
        browser.focus_page(page)
        page.keyboard.press("U")
        assert browser.wait_for_set(page, key, n=4) == last
        assert shown_image_shas(page) == seen[last][2]
        page.keyboard.press("2")
        seen[last] = ("key", 2, seen[last][2])
        key = browser.wait_for_set(page, last, n=4)
        browser.wait_for_acknowledged(page)  # the undo and the answer after it are both handled
        browser.wait_for_labels(page, 5)
        # To another page and back: the new panel has no images and asks for them again.
        page.get_by_role("link", name="History").click()
        page.locator(".pl-set").first.wait_for(state="detached")
        page.get_by_role("link", name="Rate").click()
        assert browser.wait_for_set(page, None, n=4) == key
        page.wait_for_timeout(500)  # a late sixth answer (say, from the double click) would land now
        assert page.get_by_text("labels today").first.inner_text().startswith("5")
    rows = judgements(ctx)
    assert len(rows) == 5
    with read_session(ctx.engine) as s:
        key_of = {c.id: c.key for c in s.exec(select(Comparison))}
        sha_of = {c.id: c.image_sha256 for c in s.exec(select(Candidate))}
    for j in rows:
        how, what, shas = seen[key_of[j.comparison_id]]
        assert [sha_of[c] for c in j.shown_order] == shas  # the recorded order is the order on screen
        if what == "T":
            assert (j.choice, j.winner_id) == ("tie", None)
        else:
            assert j.choice == "pick" and sha_of[j.winner_id] == shas[what - 1]
        assert j.rater_id == alice[0].rater_id and j.time_ms is not None


@pytest.mark.browser
@pytest.mark.slow
def test_oidc_sign_in_needs_the_allow_list(ctx, home):
    """st.login against a local OpenID Connect provider: a stranger writes nothing; once allowed, the
    provider's email is the rater written to the store."""
    from feedback_app.logic import allow_oidc_rater
    from pickloop.db import write_session
    from pickloop.schema import Assignment, Judgement
    from tests.feedback_app.helpers import count
    from tests.feedback_app.oidc_provider import oidc_provider, write_secrets

    make_sets(ctx, 2)
    port = browser.free_port()
    with oidc_provider() as idp:
        write_secrets(home, provider=idp, app_port=port)
        with browser.app_server(home=home, port=port) as url, browser.chromium_page() as page:
            page.goto(url)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_text("is not on this project's list of raters").wait_for()
            assert idp.logins == 1 and "eve@example.org" in page.inner_text("body")
            assert count(ctx, Assignment) == 0 and count(ctx, Judgement) == 0
            with write_session(ctx.engine) as s:
                eve = allow_oidc_rater(session=s, email="eve@example.org")
                eve_id = eve.id
            page.reload()  # still logged in at the provider: now on the list, straight to rating
            browser.wait_for_set(page, None, n=4)
            browser.focus_page(page)
            page.keyboard.press("1")
            browser.wait_for_labels(page, 1)
    (j,) = judgements(ctx)
    assert j.rater_id == eve_id and j.choice == "pick"


@pytest.mark.browser
@pytest.mark.slow
def test_a_set_drawn_while_the_page_waits_reaches_it_without_an_answer(ctx, home, alice):
    """A panel that holds no set says why, and asks the server again (a tick) until one is ready: the
    set the worker finishes appears with no click, key or reload; also after a visit to another page
    (the panel, kept on the window, is mounted again and ticks again)."""
    with browser.app_server(home=home) as url, browser.chromium_page() as page:
        browser.sign_in(page, url, name="alice", token=alice[1])
        page.get_by_text("No sets are being drawn").wait_for()
        page.get_by_role("link", name="History").click()
        page.locator(".pl-panel").wait_for(state="detached")
        page.get_by_role("link", name="Rate").click()
        page.get_by_text("No sets are being drawn").wait_for()
        make_sets(ctx, 2)
        browser.wait_for_set(page, None, n=4, timeout_ms=20_000)
        assert page.locator(".pl-waiting").is_hidden()
    assert judgements(ctx) == []


# Forget the images of every set after the one on screen, as when the rerun that carried them was cut short
# (the server has marked them sent); returns how many sets lost them.
DROP_IMAGES_JS = """() => { const p = window.__pickloopPanel; let n = 0;
  for (const s of p.sets) if (s.token !== p.shown && p.srcs.delete(s.token)) n += 1;
  p.asked = ''; p.askedAt = performance.now(); return n; }"""
HOLDS_ALL_IMAGES_JS = "() => { const p = window.__pickloopPanel; return p.sets.every(s => p.srcs.has(s.token)); }"


@pytest.mark.browser
@pytest.mark.slow
def test_images_the_page_lost_are_asked_for_again_without_an_answer(ctx, home, alice):
    """Sets whose images never reached the page (the server thinks they did, so every rerun brings the
    same data) are asked for again from the panel's own timer, and the next answer swaps at once."""
    make_sets(ctx, 4)
    with browser.app_server(home=home) as url, browser.chromium_page() as page:
        browser.sign_in(page, url, name="alice", token=alice[1])
        key = browser.wait_for_set(page, None, n=4)
        page.wait_for_function(HOLDS_ALL_IMAGES_JS, polling=100, timeout=20_000)
        assert page.evaluate(DROP_IMAGES_JS) >= 1
        page.wait_for_function(HOLDS_ALL_IMAGES_JS, polling=100, timeout=20_000)  # no key pressed meanwhile
        browser.focus_page(page)
        page.keyboard.press("1")
        browser.wait_for_set(page, key, n=4, timeout_ms=5_000)
        browser.wait_for_labels(page, 1)
    assert len(judgements(ctx)) == 1


# Where each candidate of the set on screen is drawn (x, y, width, height), in CSS pixels.
CELL_BOXES_JS = """() => [...document.querySelectorAll('.pl-set:not([hidden]) .pl-cand')]
  .map(e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height].map(Math.round); })"""
# Answer the set on screen with KEY, then press U DELAY ms later, timed in the page (not by Python).
ANSWER_THEN_UNDO_JS = """async ([key, delay]) => {
  const press = (k) => document.dispatchEvent(new KeyboardEvent('keydown', {
    key: k, code: /^[0-9]$/.test(k) ? `Digit${k}` : `Key${k.toUpperCase()}`, bubbles: true, cancelable: true}));
  press(key);
  await new Promise((done) => setTimeout(done, delay));
  press('u');
}"""


@pytest.mark.browser
@pytest.mark.slow
def test_undo_takes_back_exactly_the_last_answer_recorded_or_not(ctx, home, alice):
    """U 0.25 s after an answer (before the server has recorded it, as a rule) and 1.5 s after (once it
    has): each time the undone set comes back, the answer before it stands, and the answer given
    again is the one stored."""
    make_sets(ctx, 10)
    final: dict[str, tuple[str, list[str]]] = {}  # set key -> (what was finally answered, images shown)
    with browser.app_server(home=home) as url, browser.chromium_page() as page:
        browser.sign_in(page, url, name="alice", token=alice[1])
        key = browser.wait_for_set(page, None, n=4)
        browser.focus_page(page)
        answers = 0
        for delay in (250, 250, 1500):
            final[key] = ("1", shown_image_shas(page))
            before = page.evaluate(CELL_BOXES_JS)
            page.keyboard.press("1")  # an answer that must stand
            answers += 1
            key = browser.wait_for_set(page, key, n=4)
            assert page.evaluate(CELL_BOXES_JS) == before  # nothing moved under the pointer
            undone, shas = key, shown_image_shas(page)
            page.evaluate(ANSWER_THEN_UNDO_JS, ["3", delay])
            assert browser.visible_set(page).get_attribute("data-key") == undone  # back on screen at once
            page.keyboard.press("4")  # the answer given again
            answers += 1
            final[undone] = ("4", shas)
            key = browser.wait_for_set(page, undone, n=4)
            browser.wait_for_acknowledged(page)
            browser.wait_for_labels(page, answers)
    rows = judgements(ctx)
    assert len(rows) == answers == 6
    with read_session(ctx.engine) as s:
        key_of = {c.id: c.key for c in s.exec(select(Comparison))}
        sha_of = {c.id: c.image_sha256 for c in s.exec(select(Candidate))}
    for j in rows:
        what, shas = final[key_of[j.comparison_id]]
        assert j.choice == "pick" and sha_of[j.winner_id] == shas[int(what) - 1], \
            (j.id, what, shas.index(sha_of[j.winner_id]) + 1)


def _png_text(path) -> tuple[dict, bytes]:
    from PIL import Image

    with Image.open(path) as img:
        return dict(img.text), img.convert("RGB").tobytes()


@pytest.mark.browser
@pytest.mark.slow
def test_create_keep_downloads_the_png_and_stores_one_judgement(ctx, home, alice):
    """Sign in, Create, keep 2 (the PNG downloads with prompt, seed and model version in its text chunks),
    a second press and a click do nothing, U takes it back, a click keeps 3: one judgement, the third."""
    from PIL import Image

    from pickloop.db import write_session
    from pickloop.schema import Judgement, ModelVersion, Prompt
    from pickloop.store import ensure_base_version

    with write_session(ctx.engine) as s:
        version = ensure_base_version(session=s, base_model=ctx.base_model).name
    prompt = "a large red circle on a blue background"
    with browser.app_server(home=home) as url, browser.chromium_page() as page:
        browser.sign_in(page, url, name="alice", token=alice[1])
        page.get_by_role("link", name="Create").click()
        key = browser.create(page, prompt, n=4)
        with page.expect_download() as first:
            page.keyboard.press("2")
        kept = page.locator(".pc-set .pl-cand").nth(1)
        assert "pc-kept" in kept.get_attribute("class")
        page.keyboard.press("2")  # one answer a set: this and the click below change nothing
        page.locator(".pc-set .pl-cand").nth(0).click()
        browser.wait_for_create_acknowledged(page)
        assert len(judgements(ctx)) == 1
        page.keyboard.press("U")
        browser.wait_for_create_acknowledged(page)
        assert judgements(ctx) == []
        with page.expect_download() as second:
            page.locator(".pc-set .pl-cand").nth(2).click()
        browser.wait_for_create_acknowledged(page)
        page.wait_for_timeout(300)  # a late extra answer (from the presses above) would land now
        texts = [_png_text(d.value.path()) + (d.value.suggested_filename,) for d in (first, second)]
        page.get_by_role("link", name="History").click()  # away and back: the set and its keep are still there
        page.locator(".pc-set").wait_for(state="detached")
        page.get_by_role("link", name="Create").click()
        page.locator(".pc-set .pl-cand.pc-kept").nth(0).wait_for()
        assert page.locator(".pc-set").get_attribute("data-key") == key
        assert "pc-kept" in page.locator(".pc-set .pl-cand").nth(2).get_attribute("class")
    (j,) = judgements(ctx)
    with read_session(ctx.engine) as s:
        comp = s.exec(select(Comparison).where(Comparison.key == key)).one()
        cands = {c.id: c for c in s.exec(select(Candidate).where(Candidate.comparison_id == comp.id))}
        by_slot = sorted(cands.values(), key=lambda c: c.slot)
        assert (comp.source, comp.status) == ("create", "done")
        assert s.get(Prompt, comp.prompt_id).written_by == alice[0].rater_id
        assert s.exec(select(ModelVersion).where(ModelVersion.id == comp.model_version_id)).one().name == version
        assert len(s.exec(select(Judgement)).all()) == 1
    assert (j.choice, j.winner_id, j.rater_id) == ("pick", by_slot[2].id, alice[0].rater_id)
    for (text, pixels, name), cand in zip(texts, (by_slot[1], by_slot[2])):
        assert text["prompt"] == prompt and text["seed"] == str(cand.seed) and text["model_version"] == version
        assert name == f"pickloop-{key[:8]}-{cand.seed}.png"
        stored = Image.open(ctx.images.local_path(cand.image_sha256)).convert("RGB").tobytes()
        assert pixels == stored  # the file is the candidate kept


@pytest.mark.browser
@pytest.mark.slow
def test_a_rater_in_a_group_sees_only_the_set_the_groups_version_drew(ctx, home, alice):
    from pickloop import audiences
    from pickloop.db import write_session
    from pickloop.schema import ModelVersion

    make_sets(ctx, 3)  # drawn by the shared version: not alice's
    with write_session(ctx.engine) as s:
        audiences.add_group(session=s, name="designers")
        audiences.set_membership(session=s, group="designers", raters=["alice"])
        s.add(ModelVersion(name="v-design", base_model=ctx.base_model, method="dpo"))
        s.flush()
        vid = audiences.serve(session=s, ref="v-design", audience="group:designers").id
    [group_set] = make_sets(ctx, 1, version=vid)
    with read_session(ctx.engine) as s:
        group_key = s.get(Comparison, group_set).key
    with browser.app_server(home=home) as url, browser.chromium_page() as page:
        browser.sign_in(page, url, name="alice", token=alice[1])
        assert browser.wait_for_set(page, None, n=4) == group_key
        browser.visible_set(page).locator(".pl-cand").nth(0).click()
        page.locator(".pl-waiting").wait_for()  # nothing more: the shared version's three are not hers
        browser.wait_for_acknowledged(page)
    assert [j.comparison_id for j in judgements(ctx)] == [group_set]
    assert count(ctx, Assignment) == 1  # nothing else was handed to her

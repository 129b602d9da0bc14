"""The rating panel's server side: which sets the browser holds, and the answers it sends back.

The panel (``static/rating_panel.js``, a Streamlit v2 component) keeps the set on screen and the
next ones decoded in the page and swaps to the next set the moment a rater answers; the answer
travels to the server afterwards. So the server hands out sets ahead (``depth`` in the browser at
once) and trusts nothing from the browser but a token: an answer names the *showing* of a set it
was sent (a token), and the server looks the set up in its own session state. Answers arrive as an
outbox of every answer not yet acknowledged; each is recorded idempotently (the set's idempotency
key), so a replayed outbox, a double click, a reconnect or a second tab never writes twice.

``Panel`` is per browser session (kept in ``st.session_state`` by the page) and makes no Streamlit
calls, so tests drive it directly; ``mount`` is the component itself, defined once per process.
"""
from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from feedback_app.logic import SetView

log = logging.getLogger("pickloop.app")

JS = (Path(__file__).parent / "static" / "rating_panel.js").read_text(encoding="utf-8")
CSS = """
.pl-panel { width: 100%; --pl-side: 240px; --pl-cols: 4; }
.pl-status { height: 1.6rem; line-height: 1.6rem; margin: 0; font-size: 0.9rem; overflow: hidden;
             white-space: nowrap; text-overflow: ellipsis; opacity: 0.8; }
.pl-prompt { margin: 0 0 0.5rem 0; font-size: 1.25rem; font-weight: 600; line-height: 1.6rem; height: 1.6rem;
             overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.pl-grid { display: grid; gap: 0.75rem; justify-content: center;
           grid-template-columns: repeat(var(--pl-cols), var(--pl-side)); }
.pl-cand { position: relative; width: var(--pl-side); height: var(--pl-side); padding: 0;
           border: 3px solid transparent; border-radius: 6px; background: transparent; cursor: pointer; }
.pl-cand:hover { border-color: var(--st-primary-color, #ff4b4b); }
.pl-cand img { display: block; width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
               border-radius: 4px; }
.pl-num { position: absolute; left: 6px; top: 4px; font-size: 0.8rem; padding: 0 0.35rem; border-radius: 4px;
          background: rgba(0, 0, 0, 0.55); color: #fff; pointer-events: none; }
.pl-zoom { position: absolute; right: 4px; top: 4px; width: 1.8rem; height: 1.8rem; border: none;
           border-radius: 4px; background: rgba(0, 0, 0, 0.55); color: #fff; cursor: zoom-in; font-size: 1rem; }
.pl-row { display: flex; gap: 0.5rem; margin-top: 0.6rem; flex-wrap: wrap; }
.pl-btn { flex: 1 1 0; padding: 0.45rem 0.75rem; border-radius: 0.5rem; cursor: pointer; font: inherit;
          border: 1px solid rgba(49, 51, 63, 0.2); background: var(--st-background-color, #fff);
          color: var(--st-text-color, #31333f); }
.pl-btn:hover { border-color: var(--st-primary-color, #ff4b4b); }
.pl-btn:disabled { opacity: 0.45; cursor: default; }
.pl-signout { flex: 0 1 auto; }
.pl-waiting { min-height: calc(var(--pl-side) + 3.5rem); margin: 0; opacity: 0.75; }
.pl-overlay { position: fixed; inset: 0; z-index: 999990; background: rgba(0, 0, 0, 0.82); display: flex;
              align-items: center; justify-content: center; padding: 1rem; }
.pl-overlay img { max-width: 96vw; max-height: 92vh; width: min(92vh, 96vw); image-rendering: pixelated;
                  cursor: zoom-out; }
.pl-guide { max-width: 40rem; max-height: 90vh; overflow: auto; padding: 1.25rem 1.5rem; border-radius: 0.5rem;
            background: var(--st-background-color, #fff); color: var(--st-text-color, #31333f); }
.pl-guide p { margin: 0 0 0.6rem 0; }
[data-stale="true"]:has(.pl-panel) { opacity: 1 !important; transition: none !important; }
"""
CHOICES = ("pick", "tie", "none", "skip", "undo")  # undo: take back the answer to this token
MAX_OUTBOX = 64  # more unacknowledged answers than this is not a browser we wrote: ignore the rest
ACK_KEEP = 64  # acknowledged answer ids remembered (the browser drops them from its outbox)
ANSWERED_KEEP = 8  # answered showings kept, so that the last one can be undone


@dataclass(frozen=True)
class Answer:
    """One answer from the browser: its own id (new for every answer, so an answer given again after
    an undo is a new one), a showing's token, the choice, the winner (picks) and the time taken."""

    token: str
    choice: str
    winner_id: int | None
    ms: int | None
    id: str = ""


def parse_outbox(value: Any) -> list[Answer]:
    """The well-formed answers in the component's state; anything else is dropped with a log line.

    The browser is not trusted: a malformed entry never raises, it is simply not an answer.
    """
    outbox = value.get("outbox") if isinstance(value, dict) else None
    if not isinstance(outbox, list):
        return []
    answers = []
    for entry in outbox[:MAX_OUTBOX]:
        try:
            token, choice = str(entry["token"]), str(entry["choice"])
            answer_id = str(entry.get("id") or token)[:64]
            winner = entry.get("winner_id")
            winner = None if winner is None else int(winner)
            ms = entry.get("ms")
            ms = None if ms is None else max(0, min(int(ms), 86_400_000))
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("ignored a malformed answer from the browser: %r", str(entry)[:200])
            continue
        if choice not in CHOICES:
            log.warning("ignored an answer with unknown choice %r", choice[:20])
            continue
        answers.append(Answer(token=token, choice=choice, winner_id=winner, ms=ms, id=answer_id))
    return answers


@dataclass
class Panel:
    """What one browser session's panel holds: the queue of sets sent ahead, by showing token."""

    depth: int = 2
    queue: list[SetView] = field(default_factory=list)  # queue[0] is on screen
    tokens: dict[int, str] = field(default_factory=dict)  # comparison id -> token of its current showing
    sent: dict[str, SetView] = field(default_factory=dict)  # token -> set, for every showing not answered
    shows: dict[int, int] = field(default_factory=dict)  # comparison id -> times shown (undo shows again)
    acked: OrderedDict[str, None] = field(default_factory=OrderedDict)  # answer ids handled
    answered: OrderedDict[str, SetView] = field(default_factory=OrderedDict)  # token -> set, latest last
    uris: dict[str, str] = field(default_factory=dict)  # image sha256 -> data: URL, for the queue's images
    imaged: set[str] = field(default_factory=set)  # tokens whose images went to the browser already
    need_seen: str | None = None  # the last request of the browser for images again (see ``handle_need``)
    # Names this panel to the browser: while it is the same, the browser keeps its panel (outbox, answers
    # not yet acknowledged, the undone set, images) even when Streamlit mounts the component anew.
    panel_id: str = field(default_factory=lambda: secrets.token_hex(8))

    def token(self, view: SetView) -> str:
        if view.comparison_id not in self.tokens:
            n = self.shows.get(view.comparison_id, 0)
            self.shows[view.comparison_id] = n + 1
            tok = f"{view.key}.{n}"
            self.tokens[view.comparison_id] = tok
            self.sent[tok] = view
        return self.tokens[view.comparison_id]

    def fill(self, next_set: Callable[[list[int]], SetView | None]) -> None:
        """Hand out sets until ``depth`` are held; ``next_set(skip)`` gives a set not in ``skip`` or None."""
        while len(self.queue) < self.depth:
            view = next_set([v.comparison_id for v in self.queue])
            if view is None or any(v.comparison_id == view.comparison_id for v in self.queue):
                return
            self.queue.append(view)
            self.token(view)

    def drop(self, comparison_id: int) -> None:
        self.queue = [v for v in self.queue if v.comparison_id != comparison_id]
        tok = self.tokens.pop(comparison_id, None)
        if tok is not None:
            self.sent.pop(tok, None)

    def new_answers(self, value: Any) -> list[Answer]:
        """Entries of the component's outbox not yet handled, in the browser's order."""
        return [a for a in parse_outbox(value) if a.id not in self.acked]

    def view_of(self, answer: Answer) -> SetView | None:
        """The set an answer's token names now (after the undos before it), or None for a token this
        session did not send (it is acknowledged and otherwise ignored)."""
        view = self.sent.get(answer.token)
        if view is None:
            log.warning("ignored an answer for a set this session did not send: %r", answer.token[:40])
        return view

    def acknowledge(self, answer: Answer, view: SetView | None) -> None:
        """The answer is handled (recorded, refused or ignored): the set leaves the queue."""
        self.acked[answer.id] = None
        while len(self.acked) > ACK_KEEP:
            self.acked.popitem(last=False)
        if view is not None and self.tokens.get(view.comparison_id) == answer.token:
            self.drop(view.comparison_id)
            self.answered.pop(answer.token, None)
            self.answered[answer.token] = view
            while len(self.answered) > ANSWERED_KEEP:
                self.answered.popitem(last=False)

    def undone_view(self, token: str) -> SetView | None:
        """The set a token showed, if this session sent it (answered or still held)."""
        return self.answered.get(token) or self.sent.get(token)

    def restore(self, token: str) -> SetView | None:
        """Put the set of ``token`` first again under the same token (an undone answer): an answer the
        browser gives it next is recorded anew. None when this session never showed that token."""
        view = self.undone_view(token)
        if view is None:
            return None
        self.answered.pop(token, None)
        self.queue = [v for v in self.queue if v.comparison_id != view.comparison_id]
        self.queue.insert(0, view)
        self.tokens[view.comparison_id] = token
        self.sent[token] = view
        return view

    def handle_need(self, value: Any) -> None:
        """The browser asks for the images of some sets again (a new page, say, after visiting another
        one): ``{"need": {"id": <new each time>, "tokens": [...]}}`` in the component's state."""
        need = value.get("need") if isinstance(value, dict) else None
        if not isinstance(need, dict) or need.get("id") == self.need_seen:
            return
        self.need_seen = str(need.get("id"))
        tokens = need.get("tokens")
        self.imaged -= {str(t) for t in tokens} if isinstance(tokens, list) else set(self.imaged)

    def data(self, image_uri: Callable[[str], str]) -> dict[str, Any]:
        """The component's data: the queue, the acknowledged tokens, and inline images (each read
        once) for the sets whose images the browser does not hold yet; it keeps the others by token."""
        sets = []
        for v in self.queue:
            tok = self.token(v)
            send = tok not in self.imaged
            cands = []
            for c in v.candidates:
                if send and c.image_sha256 not in self.uris:
                    self.uris[c.image_sha256] = image_uri(c.image_sha256)
                cands.append({"id": c.id, "src": self.uris[c.image_sha256]} if send else {"id": c.id})
            sets.append({"token": tok, "key": v.key, "prompt": v.prompt, "candidates": cands})
        live = {self.token(v) for v in self.queue}
        self.imaged = (self.imaged & live) | live
        held = {c.image_sha256 for v in self.queue for c in v.candidates}
        self.uris = {sha: uri for sha, uri in self.uris.items() if sha in held}
        return {"sets": sets, "acked": list(self.acked), "panel_id": self.panel_id}


def _define() -> Callable[..., Any]:
    import streamlit as st

    return st.components.v2.component("pickloop.rating_panel", js=JS, css=CSS, isolate_styles=False)


mount = _define()  # defined once per process: ``mount(key=..., data=Panel.data(...), ...)``

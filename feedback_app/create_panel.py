"""The Create panel's server side: the request for candidates, the set on screen, the answers sent back.

The panel (``static/create_panel.js``, a Streamlit v2 component) holds the prompt box and the set on
screen. A request for candidates carries an id made in the browser; the set drawn for it is stored under
a key made from that id (``feedback_app.create.offer_key``), so a request seen twice (a rerun, a double
click) draws and stores one set. Answers travel as on the Rate page: an outbox of every answer not yet
acknowledged, each with its own id and the token of the showing it answers; the server looks the set up
in its own state (a token it did not issue answers nothing) and records it under the set's idempotency
key. The page shows a keep at once (and starts the download) without waiting for the server.

Images travel with the set until the browser reports that it holds them (``held``).
``CreatePanel`` is per browser session (in ``st.session_state``) and makes no Streamlit calls, so tests
drive it directly; ``mount`` is the component, defined once per process.
"""
from __future__ import annotations

import base64
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from feedback_app.create import Offer, download_name, download_png
from feedback_app.rating_panel import CSS as RATING_CSS
from feedback_app.rating_panel import Answer, parse_outbox

log = logging.getLogger("pickloop.app")

STATIC = Path(__file__).parent / "static"
JS = (STATIC / "panel_common.js").read_text(encoding="utf-8") + (STATIC / "create_panel.js").read_text(encoding="utf-8")
CSS = RATING_CSS + """
.pc-form { display: flex; gap: 0.5rem; align-items: center; margin: 0 0 0.4rem 0; }
.pc-input { flex: 1 1 auto; min-width: 0; padding: 0.5rem 0.75rem; border-radius: 0.5rem; font: inherit;
            border: 1px solid rgba(49, 51, 63, 0.3); background: var(--st-background-color, #fff);
            color: var(--st-text-color, #31333f); }
.pc-count { font-size: 0.8rem; opacity: 0.65; white-space: nowrap; }
.pl-cand.pc-kept { border-color: #21a366; }
.pc-answered .pl-cand:not(.pc-kept) { opacity: 0.45; }
.pc-download { align-self: center; white-space: nowrap; }
"""
ACK_KEEP = 64  # acknowledged answer ids remembered
OFFERS_KEEP = 8  # sets of this session kept answerable (the one on screen and the last few)
REQUESTS_KEEP = 16  # request ids remembered as handled


@dataclass
class CreatePanel:
    """What one browser session's Create panel holds."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the browser keeps one panel per id
    offers: OrderedDict[str, Offer] = field(default_factory=OrderedDict)  # token -> set, latest last
    token: str | None = None  # the set on screen
    acked: OrderedDict[str, None] = field(default_factory=OrderedDict)  # answer ids handled
    requests: OrderedDict[str, None] = field(default_factory=OrderedDict)  # request ids handled

    # ---------------------------------------------------------------- requests for candidates

    def new_request(self, value: Any) -> tuple[str, str] | None:
        """(request id, prompt) when the browser asks for a set this session has not handled yet."""
        req = value.get("request") if isinstance(value, dict) else None
        if not isinstance(req, dict):
            return None
        rid, prompt = str(req.get("id") or "")[:64], req.get("prompt")
        if not rid or rid in self.requests:
            return None
        return rid, prompt if isinstance(prompt, str) else ""

    def handled(self, request_id: str) -> None:
        self.requests[request_id] = None
        while len(self.requests) > REQUESTS_KEEP:
            self.requests.popitem(last=False)

    def show(self, offer: Offer) -> str:
        """Put ``offer`` on screen; its token (the same one when this set is already held)."""
        for tok, held in self.offers.items():
            if held.view.comparison_id == offer.view.comparison_id:
                self.token = tok
                return tok
        tok = f"{offer.view.key}.0"
        self.offers[tok] = offer
        while len(self.offers) > OFFERS_KEEP:
            self.offers.popitem(last=False)
        self.token = tok
        return tok

    @property
    def current(self) -> Offer | None:
        return self.offers.get(self.token) if self.token else None

    # ---------------------------------------------------------------- answers

    def new_answers(self, value: Any) -> list[Answer]:
        """Entries of the outbox not yet handled, in the browser's order."""
        return [a for a in parse_outbox(value) if a.id not in self.acked]

    def offer_of(self, answer: Answer) -> Offer | None:
        offer = self.offers.get(answer.token)
        if offer is None:
            log.warning("ignored a Create answer for a set this session did not send: %r", answer.token[:40])
        return offer

    def acknowledge(self, answer: Answer) -> None:
        self.acked[answer.id] = None
        while len(self.acked) > ACK_KEEP:
            self.acked.popitem(last=False)

    # ---------------------------------------------------------------- what the browser gets

    def data(self, image_bytes: Callable[[str], bytes], answer: dict | None, held: Any) -> dict[str, Any]:
        """The component's data: the set on screen, with its images (each a PNG carrying the download's
        text chunks) unless the browser says it holds them (``held``: the token it last reported), its
        recorded ``answer`` (``{choice, winner_id}`` or None), and the answer and request ids handled.
        The browser's word, not a record of what was sent, decides: a page whose data was lost (a run cut
        short by the next, a panel mounted afresh) gets the images on the next run, which its report
        that it lacks them starts."""
        offer, tok = self.current, self.token
        shown = None
        if offer is not None:
            send = held != tok
            cands = []
            for c, seed, params in zip(offer.view.candidates, offer.seeds, offer.params):
                entry = {"id": c.id, "name": download_name(offer.view.key, seed)}
                if send:
                    png = download_png(image_bytes(c.image_sha256), prompt=offer.view.prompt, seed=seed,
                                       params=params, version=offer.version, set_key=offer.view.key)
                    entry["src"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
                cands.append(entry)
            shown = {"token": tok, "key": offer.view.key, "prompt": offer.view.prompt, "version": offer.version,
                     "candidates": cands, "answer": answer}
        return {"set": shown, "acked": list(self.acked), "done": list(self.requests), "panel_id": self.id}


def _define() -> Callable[..., Any]:
    import streamlit as st

    return st.components.v2.component("pickloop.create_panel", js=JS, css=CSS, isolate_styles=False)


mount = _define()  # defined once per process

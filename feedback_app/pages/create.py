"""Create: type a prompt, get N candidates drawn by the version that serves you, keep one (click or 1-4;
the PNG downloads, carrying prompt, seed, sampler settings and model version) or say none is good (N);
U undoes the answer for a few seconds, / goes back to the prompt box.

The panel (``feedback_app/create_panel.py``) shows an answer at once and sends it afterwards, in an
outbox the server handles in order and acknowledges; the set drawn for a request is stored under a key
made from the request's id, so nothing is drawn or stored twice. The model is loaded once per app process
(in the background when this page first opens) and shared by every rater.
"""
import streamlit as st
from sqlalchemy.exc import OperationalError

from feedback_app import create, create_panel, logic, ui
from feedback_app.create_panel import CreatePanel
from pickloop.db import read_session
from pickloop.errors import UserError

PANEL_KEY = "create_panel"

ident = ui.require_identity()
ctx = ui.context()
state = st.session_state


def panel() -> CreatePanel:
    p = state.get("create")
    if not isinstance(p, CreatePanel):
        p = state["create"] = CreatePanel()
    return p


def notice(text: str) -> None:
    state["create_status_n"] = state.get("create_status_n", 0) + 1
    state["create_status"] = {"id": state["create_status_n"], "text": text}


def draw(p: CreatePanel, value: object) -> None:
    """Draw the set the browser asks for (once per request id) and put it on screen."""
    req = p.new_request(value)
    me = ui.identity()
    if req is None or me is None:
        return
    request_id, prompt = req
    try:
        offer = create.create_offer(ctx, identity=me, text=prompt, request_id=request_id)
    except UserError as e:
        notice(str(e))
    except OperationalError:
        notice("The database is busy and nothing was drawn; press Create again in a moment.")
    else:
        p.show(offer)
        notice(f"Click the one you like or press 1-{len(offer.view.candidates)} to keep it; N: none is good.")
    p.handled(request_id)


def undo(p: CreatePanel, token: str) -> None:
    """Take back the answer to the set the browser names, recorded yet or not."""
    offer, me = p.offers.get(token), ui.identity()
    if offer is None or me is None:
        notice("Nothing to undo.")
        return
    with read_session(ctx.engine) as s:
        recorded = logic.answered(session=s, rater_id=me.rater_id, comparison_id=offer.view.comparison_id)
    if recorded and not ui.run_write(logic.undo_answer, identity=me, comparison_id=offer.view.comparison_id,
                                     within_s=ctx.settings.undo_seconds + ui.UNDO_SLACK_S):
        notice(f"Too late to undo: an answer can be taken back for {ctx.settings.undo_seconds:g} s.")


def refresh(p: CreatePanel) -> None:
    """Handle what the browser sent, in its order and each entry once: answers and undos, then a request."""
    value = state.get(PANEL_KEY)
    for answer in p.new_answers(value):
        offer, me = p.offer_of(answer), ui.identity()  # the rater always comes from the signed-in identity
        if answer.choice == "undo":
            undo(p, answer.token)
        elif offer is not None and me is not None and answer.choice in create.ANSWERS:
            ui.run_write(create.keep, identity=me, view=offer.view, choice=answer.choice,
                         winner_id=answer.winner_id, time_ms=answer.ms)
        p.acknowledge(answer)
    draw(p, value)


def recorded_answer(p: CreatePanel) -> dict | None:
    offer = p.current
    if offer is None:
        return None
    with read_session(ctx.engine) as s:
        j = create.answer_of(session=s, rater_id=ident.rater_id, comparison_id=offer.view.comparison_id)
    return None if j is None else {"choice": j.choice, "winner_id": j.winner_id}


@st.fragment
def create_view() -> None:
    """The panel; its requests and answers rerun only this fragment. Not on a timer (as Rate is): a timed
    rerun that arrives while a set is being drawn would cut that run short before it sends the set."""
    if ui.identity() is None:  # signed out in another tab (or the session expired): to the sign-in page
        st.rerun(scope="app")
    with read_session(ctx.engine) as s:
        settings = create.create_settings(session=s)
    if not settings.enabled:
        st.info("Create is switched off by an admin.")
        return
    p = panel()
    refresh(p)
    issue = state.pop("notice", None)  # a store error from ui.run_write
    if issue:
        notice(issue[1])
    value = state.get(PANEL_KEY)
    held = value.get("held") if isinstance(value, dict) else None
    data = p.data(lambda sha: ui.image_bytes(ctx, sha), recorded_answer(p), held)
    data.update(undo_s=ctx.settings.undo_seconds, n=ctx.settings.create_candidates,
                max_chars=settings.max_prompt_chars, status=state.get("create_status"))
    create_panel.mount(key=PANEL_KEY, data=data, default={"request": None, "outbox": [], "held": None},
                       on_request_change=lambda: None, on_outbox_change=lambda: None, on_held_change=lambda: None)


def warm_up() -> None:
    """Start loading the model the first time this session opens the page."""
    if not state.get("create_warm"):
        state["create_warm"] = True
        create.warm_up(ctx, ident.rater_id)


st.html(ui.CSS)
warm_up()
create_view()

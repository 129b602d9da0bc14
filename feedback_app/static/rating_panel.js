// The rating panel: the set on screen plus the next ones, already decoded in the page, so that an
// answer swaps to the next set at once, without waiting for the server.
//
// Data from Python: {sets: [{token, key, prompt, candidates: [{id, src?}]}], acked: [answer id],
// undo_s, status: {id, text}, behind, guide: {text, show}, depth, tick_s: {short, idle}}. sets[0] is
// the set the server wants on screen, the rest come after it. A token names one showing of a set.
// Images (src, data: URLs) come once per token; the panel keeps them, and asks again ({need}) when it
// holds none for a set.
// State to Python: {outbox: [{id, token, choice, winner_id, ms}], need: {id, tokens}, guide_seen: id,
// signout: id, tick: id}. The outbox holds every answer not yet acknowledged; sending all of it each
// time means an answer is never lost when two come faster than the server reruns (the server records
// each once). A tick asks the server for a rerun when there has been none for a while: after
// tick_s.short while the panel holds fewer than depth sets (sets the worker has finished since reach
// it without an answer), after tick_s.idle otherwise (a sign-out elsewhere, an expired session).
// Answers rerun the server at once, so a rater answering steadily costs no ticks.
//
// Undo (U or the Undo button) takes back exactly the last answer given here, whether the server has
// recorded it yet or not: the answer leaves the outbox (if it is still there the server never sees
// it), and an entry {choice: "undo", token} in the outbox asks the server to delete it if it did. The set is back on screen
// at once under the same token, so the answer given next is recorded anew.
//
// Layout: the candidates get the largest square that fits the viewport: a row of up to 4 on a wide
// screen, 2x2 where that is larger, one column on a phone. The status line and the prompt keep a fixed
// height, so nothing moves under the pointer after an answer.
//
// Double clicks and held keys: the second click of a double click (event.detail > 1) and key
// repeats are ignored, so they never answer the set that has just appeared.

// uid, make, button, setStatus, typing, digitOf and squareLayout come from panel_common.js, prepended to this file.

const KEYS = { t: "tie", n: "none", s: "skip" };

function answer(panel, set, choice, winnerId) {
  if (panel.shown !== set.token) return; // only the set on screen can be answered
  closeOverlay(panel);
  const now = performance.now();
  const entry = { id: uid(), token: set.token, choice, winner_id: winnerId ?? null,
                  ms: Math.round(now - panel.shownAt) };
  panel.answered.add(set.token);
  panel.outbox.push(entry);
  panel.last = { entry, set, srcs: panel.srcs.get(set.token), at: now };
  if (panel.undone && panel.undone.set.token === set.token) panel.undone = null;
  panel.setStateValue("outbox", panel.outbox.slice());
  panel.heard = now;
  setStatus(panel, "");
  show(panel);
}

function undo(panel) {
  const last = panel.last;
  if (!last || performance.now() - last.at > panel.undoMs) {
    setStatus(panel, "Nothing to undo.");
    return;
  }
  panel.last = null;
  closeOverlay(panel);
  // The answer leaves the outbox (if the server has not seen it, it never will), and an undo entry
  // takes its place: in the same ordered list as the answers, so the server always handles it after
  // the answer it undoes and before the answer given next.
  const entry = { id: uid(), token: last.set.token, choice: "undo", winner_id: null, ms: null };
  panel.outbox = panel.outbox.filter((a) => a.id !== last.entry.id);
  panel.outbox.push(entry);
  panel.answered.delete(last.set.token);
  panel.undone = { set: last.set, srcs: last.srcs, id: entry.id };
  panel.setStateValue("outbox", panel.outbox.slice());
  setStatus(panel, "Undone: answer this set again.");
  show(panel);
}

function closeOverlay(panel) {
  if (panel.overlay) { panel.overlay.remove(); panel.overlay = null; }
}

function enlarge(panel, src, alt) {
  closeOverlay(panel);
  const o = make("div", "pl-overlay");
  const img = new Image();
  img.src = src;
  img.alt = alt;
  o.appendChild(img);
  o.addEventListener("click", () => closeOverlay(panel));
  document.body.appendChild(o);
  panel.overlay = o;
}

function showGuide(panel) {
  closeOverlay(panel);
  const o = make("div", "pl-overlay");
  const box = make("div", "pl-guide");
  box.setAttribute("role", "dialog");
  box.appendChild(make("h3", "", "How to rate"));
  for (const para of (panel.guide || "").split(/\n/)) if (para.trim()) box.appendChild(make("p", "", para));
  const ok = button("Got it", "pl-btn pl-primary", "close the guide (Esc)", () => {
    closeOverlay(panel);
    panel.setStateValue("guide_seen", uid());
  });
  box.appendChild(ok);
  o.appendChild(box);
  document.body.appendChild(o);
  panel.overlay = o;
  ok.focus();
}

function build(panel, set, srcs) {
  const node = make("div", "pl-set");
  node.hidden = true;
  node.dataset.key = set.key;
  node.dataset.token = set.token;
  const grid = make("div", "pl-grid");
  set.candidates.forEach((c, i) => {
    const img = new Image();
    img.alt = `Candidate ${i + 1}`;
    img.src = srcs[i];
    if (img.decode) img.decode().catch(() => {}); // decoded while hidden: shown without a flash
    const cell = button("", "pl-cand", `Pick ${i + 1} (key ${i + 1})`, () => answer(panel, set, "pick", c.id));
    cell.setAttribute("aria-label", `Pick ${i + 1}`);
    cell.appendChild(img);
    cell.appendChild(make("span", "pl-num", String(i + 1)));
    const zoom = button("\u2922", "pl-zoom", `Enlarge ${i + 1} (Shift+${i + 1})`, (ev) => {
      ev.stopPropagation();
      enlarge(panel, srcs[i], img.alt);
    });
    zoom.setAttribute("aria-label", `Enlarge ${i + 1}`);
    zoom.addEventListener("click", (ev) => ev.stopPropagation());
    cell.appendChild(zoom);
    grid.appendChild(cell);
  });
  node.append(make("h3", "pl-prompt", set.prompt), grid);
  panel.sets_el.appendChild(node);
  return node;
}

// The largest square side for the candidates that fits under the panel's top (squareLayout).
function layout(panel) {
  const n = Math.max(2, ...panel.queueNow.map((s) => s.candidates.length), 2);
  // status line, prompt, the row of buttons and their margins, as drawn (px)
  squareLayout(panel.root, n, panel.status.offsetHeight + 34 + panel.row.offsetHeight + 30);
}

// Put the first set not yet answered here on screen; keep the others built and hidden.
function show(panel) {
  const queue = [];
  if (panel.undone && !panel.answered.has(panel.undone.set.token)) queue.push(panel.undone.set);
  for (const s of panel.sets) {
    if (panel.answered.has(s.token) || queue.some((q) => q.token === s.token)) continue;
    if (!panel.srcs.has(s.token)) break; // its images are on their way: nothing after it either
    queue.push(s);
  }
  panel.queueNow = queue;
  const live = new Set(queue.map((s) => s.token));
  for (const [token, node] of panel.nodes) {
    if (!live.has(token)) { node.remove(); panel.nodes.delete(token); }
  }
  for (const s of queue) {
    if (!panel.nodes.has(s.token)) {
      const srcs = panel.srcs.get(s.token) || (panel.undone && panel.undone.srcs);
      panel.nodes.set(s.token, build(panel, s, srcs));
    }
  }
  const next = queue[0];
  for (const [token, node] of panel.nodes) node.hidden = !next || token !== next.token;
  panel.waiting.hidden = Boolean(next);
  panel.waiting.textContent = panel.behind || "Loading the next set\u2026";
  panel.undoBtn.disabled = !panel.last;
  if (!next) { panel.shown = null; return; }
  if (panel.shown !== next.token) {
    panel.shown = next.token;
    panel.shownAt = performance.now();
    panel.current = next;
  }
}

function onKey(ev) {
  const panel = window.__pickloopPanel;
  if (!panel || !panel.root.isConnected) return;
  if (ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (typing(ev)) return;
  const k = (ev.key || "").toLowerCase();
  if (k === "escape" && panel.overlay) {
    closeOverlay(panel);
  } else if (k === "u") {
    undo(panel);
  } else if (k === "g") {
    showGuide(panel);
  } else if (panel.current && panel.shown !== null) {
    const set = panel.current;
    const i = digitOf(ev);
    if (i >= 1 && i <= set.candidates.length) {
      if (ev.shiftKey) {
        const img = panel.nodes.get(set.token).querySelectorAll("img")[i - 1];
        enlarge(panel, img.src, img.alt);
      } else {
        answer(panel, set, "pick", set.candidates[i - 1].id);
      }
    } else if (KEYS[k] && !ev.shiftKey) {
      answer(panel, set, KEYS[k]);
    } else {
      return;
    }
  } else {
    return;
  }
  ev.preventDefault();
  ev.stopPropagation();
}

function mountPanel(parentElement) {
  const root = make("div", "pl-panel");
  const status = make("p", "pl-status", "\u00a0");
  status.setAttribute("aria-live", "polite");
  const sets_el = make("div", "pl-sets");
  const waiting = make("p", "pl-waiting", "Loading the next set\u2026");
  const row = make("div", "pl-row");
  root.append(status, sets_el, waiting, row);
  parentElement.appendChild(root);
  const panel = { root, status, sets_el, waiting, row, nodes: new Map(), srcs: new Map(), answered: new Set(),
                  outbox: [], sets: [], queueNow: [], shown: null, shownAt: 0, current: null, asked: "", askedAt: 0,
                  last: null, undone: null, overlay: null, undoMs: 8000, guide: "", behind: "",
                  depth: 1, tickMs: { short: 1000, idle: 5000 }, heard: 0, ticker: null };
  const on = (choice) => () => { if (panel.current) answer(panel, panel.current, choice); };
  row.appendChild(button("Tie", "pl-btn", "key T", on("tie")));
  row.appendChild(button("None good", "pl-btn", "key N", on("none")));
  row.appendChild(button("Skip", "pl-btn", "key S", on("skip")));
  panel.undoBtn = button("Undo", "pl-btn", "key U: take back the last answer", () => undo(panel));
  row.appendChild(panel.undoBtn);
  row.appendChild(button("Guide", "pl-btn", "key G: how to rate", () => showGuide(panel)));
  // In the component's state, not a Streamlit button; and sent again every 2 s while this panel is still on
  // screen, as the outbox is, so a request lost to a rerun in flight is never final. Once the panel is gone
  // the server has signed the rater out; if the page then stays blank (under load the app's rerun to the
  // sign-in page was seen to stop short, leaving an empty page), the page is reloaded: the session is
  // revoked on the server, so the reload shows the sign-in page.
  row.appendChild(button("Sign out", "pl-btn pl-signout", "sign out in every tab", () => {
    panel.setStateValue("signout", uid());
    if (panel.signingOut) return;
    let blank = 0;
    panel.signingOut = setInterval(() => {
      if (panel.root.isConnected) { panel.setStateValue("signout", uid()); return; }
      if (document.querySelector('input[aria-label="Token"], button[kind="primary"]')) {
        clearInterval(panel.signingOut);
      } else if (++blank >= 2) {
        clearInterval(panel.signingOut);
        window.location.reload();
      }
    }, 2000);
  }));
  window.addEventListener("resize", () => { layout(panel); });
  return panel;
}

// Ask the server for a rerun when none has come for a while (see the top of this file).
// Ask for images the page lacks; again if they have not come a second and a half later (a rerun that
// carried them can be cut short by the next one, and the server then thinks they were sent). Called when
// data arrives and from the tick timer: while the server thinks it sent them, every rerun brings the
// same data, and Streamlit need not call the component again for data it already gave.
function askForImages(panel) {
  const missing = panel.sets.filter((s) => !panel.srcs.has(s.token)).map((s) => s.token);
  const now = performance.now();
  if (missing.length && (missing.join() !== panel.asked || now - panel.askedAt > 1500)) {
    panel.asked = missing.join();
    panel.askedAt = now;
    panel.heard = now;
    panel.setStateValue("need", { id: uid(), tokens: missing });
  }
}

function tick(panel) {
  if (!panel.root.isConnected) { clearInterval(panel.ticker); panel.ticker = null; return; }
  askForImages(panel);
  const held = panel.sets.filter((s) => !panel.answered.has(s.token)).length;
  const wait = held < panel.depth || !panel.current ? panel.tickMs.short : panel.tickMs.idle;
  const now = performance.now();
  if (now - panel.heard < wait) return;
  panel.heard = now;
  panel.setStateValue("tick", uid());
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const d = data || {};
  // One panel per server-side panel, kept on the window (keptPanel): a remount keeps its outbox, its
  // answers not yet acknowledged and its undone set, so no answer or undo is lost and nothing is shown twice.
  const [panel] = keptPanel("__pickloopPanel", d, parentElement, setStateValue, mountPanel, closeOverlay, onKey);
  panel.heard = performance.now(); // the server has just run
  if (!panel.ticker) panel.ticker = setInterval(() => tick(panel), 250); // again after a remount
  panel.undoMs = 1000 * (d.undo_s ?? 8);
  panel.depth = d.depth ?? panel.depth;
  if (d.tick_s) panel.tickMs = { short: 1000 * d.tick_s.short, idle: 1000 * d.tick_s.idle };
  panel.guide = (d.guide && d.guide.text) || "";
  panel.behind = d.behind || "";
  const acked = new Set(d.acked || []);
  panel.outbox = panel.outbox.filter((a) => !acked.has(a.id));
  panel.sets = d.sets || [];
  const tokens = new Set(panel.sets.map((s) => s.token));
  if (panel.undone && tokens.has(panel.undone.set.token)) {
    // the server has put the undone set back: it is one of its sets again
    if (!panel.srcs.has(panel.undone.set.token) && panel.undone.srcs) panel.srcs.set(panel.undone.set.token, panel.undone.srcs);
    panel.undone = null;
  } else if (panel.undone && acked.has(panel.undone.id)) {
    panel.undone = null; // handled, and not put back: too late to undo (the status line says so)
  }
  for (const token of [...panel.srcs.keys()]) if (!tokens.has(token)) panel.srcs.delete(token);
  for (const s of panel.sets) {
    if (s.candidates.every((c) => c.src)) panel.srcs.set(s.token, s.candidates.map((c) => c.src));
  }
  askForImages(panel);
  const known = new Set([...panel.sets.map((s) => s.token), ...panel.outbox.map((a) => a.token)]);
  for (const token of [...panel.answered]) if (!known.has(token)) panel.answered.delete(token);
  if (d.status && d.status.id !== panel.lastServerStatus) {
    panel.lastServerStatus = d.status.id;
    setStatus(panel, d.status.text);
  }
  show(panel);
  layout(panel);
  if (d.guide && d.guide.show && !panel.guideShown) {
    panel.guideShown = true;
    showGuide(panel);
  }
}

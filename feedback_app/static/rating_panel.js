// The rating panel: the set on screen plus the next one(s), already decoded in the page, so that a
// pick swaps to the next set at once, without waiting for the server.
//
// Data from Python: {sets: [{token, key, prompt, candidates: [{id, src?}]}], acked: [token]}; sets[0]
// is the set the server wants on screen, the rest come after it. A token names one showing of a
// set (an undone set comes back under a new token). Images (src, data: URLs) come once per token;
// the panel keeps them, and asks again ({need}) when it holds none for a set (a fresh mount).
// State to Python: {outbox: [{token, choice, winner_id, ms}], need: {id, tokens}}; the outbox holds
// every answer not yet acknowledged.
// Sending the whole outbox each time means an answer is never lost when two come faster than
// the server reruns; the server records each one idempotently and acknowledges it in `acked`.
//
// Double clicks and held keys: the second click of a double click (event.detail > 1) and key
// repeats are ignored, so they never answer the set that has just appeared.

const KEYS = { t: "tie", n: "none", s: "skip" };

function make(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(label, cls, title, onClick) {
  const b = make("button", cls, label);
  b.type = "button";
  b.title = title;
  b.addEventListener("click", (ev) => { if (ev.detail <= 1) onClick(); });
  return b;
}

function answer(panel, set, choice, winnerId) {
  if (panel.shown !== set.token) return; // only the set on screen can be answered
  const now = performance.now();
  panel.answered.add(set.token);
  panel.outbox.push({ token: set.token, choice, winner_id: winnerId ?? null, ms: Math.round(now - panel.shownAt) });
  panel.setStateValue("outbox", panel.outbox.slice());
  show(panel);
}

function build(panel, set) {
  const srcs = panel.srcs.get(set.token);
  const node = make("div", "pl-set");
  node.hidden = true;
  node.dataset.key = set.key;
  node.dataset.token = set.token;
  const n = set.candidates.length;
  const grid = make("div", "pl-grid");
  const picks = make("div", "pl-row");
  set.candidates.forEach((c, i) => {
    const img = new Image();
    img.alt = `Candidate ${i + 1}`;
    img.src = srcs[i];
    if (img.decode) img.decode().catch(() => {}); // decoded while hidden: shown without a flash
    const cell = button("", "pl-cand", `Pick ${i + 1} (key ${i + 1})`, () => answer(panel, set, "pick", c.id));
    cell.appendChild(img);
    grid.appendChild(cell);
    picks.appendChild(button(`Pick ${i + 1}`, "pl-btn pl-primary", `key ${i + 1}`,
                             () => answer(panel, set, "pick", c.id)));
  });
  const other = make("div", "pl-row");
  other.appendChild(button("Tie", "pl-btn", "key T", () => answer(panel, set, "tie")));
  other.appendChild(button("None good", "pl-btn", "key N", () => answer(panel, set, "none")));
  other.appendChild(button("Skip", "pl-btn", "key S", () => answer(panel, set, "skip")));
  node.append(make("h3", "pl-prompt", set.prompt), grid, picks, other,
              make("p", "pl-caption", `set ${set.key} · keys: 1-${n} pick, T tie, N none good, S skip, U undo`));
  panel.root.appendChild(node);
  return node;
}

// Put the first set not yet answered here on screen; keep the others built and hidden.
function show(panel) {
  const queue = [];
  for (const s of panel.sets) {
    if (panel.answered.has(s.token)) continue;
    if (!panel.srcs.has(s.token)) break; // its images are on their way: nothing after it either
    queue.push(s);
  }
  const live = new Set(queue.map((s) => s.token));
  for (const [token, node] of panel.nodes) {
    if (!live.has(token)) { node.remove(); panel.nodes.delete(token); }
  }
  for (const s of queue) if (!panel.nodes.has(s.token)) panel.nodes.set(s.token, build(panel, s));
  const next = queue[0];
  for (const [token, node] of panel.nodes) node.hidden = !next || token !== next.token;
  panel.waiting.hidden = Boolean(next);
  if (!next) { panel.shown = null; return; }
  if (panel.shown !== next.token) {
    panel.shown = next.token;
    panel.shownAt = performance.now();
    panel.current = next;
  }
}

function onKey(ev) {
  const panel = window.__pickloopPanel;
  if (!panel || !panel.root.isConnected || !panel.current || panel.shown === null) return;
  if (ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
  const set = panel.current;
  const k = ev.key.toLowerCase();
  const i = Number.parseInt(k, 10);
  if (String(i) === k && i >= 1 && i <= set.candidates.length) {
    answer(panel, set, "pick", set.candidates[i - 1].id);
  } else if (KEYS[k]) {
    answer(panel, set, KEYS[k]);
  } else {
    return;
  }
  ev.preventDefault();
  ev.stopPropagation();
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let panel = parentElement.__pickloopPanel;
  if (!panel) {
    const root = make("div", "pl-panel");
    const waiting = make("p", "pl-waiting", "Loading the next set…");
    root.appendChild(waiting);
    parentElement.appendChild(root);
    panel = { root, waiting, nodes: new Map(), srcs: new Map(), answered: new Set(), outbox: [], sets: [],
              shown: null, shownAt: 0, current: null, asked: "" };
    parentElement.__pickloopPanel = panel;
  }
  panel.setStateValue = setStateValue;
  window.__pickloopPanel = panel;
  if (!window.__pickloopKeys) {
    window.__pickloopKeys = true;
    document.addEventListener("keydown", onKey, true);
  }
  const acked = new Set((data && data.acked) || []);
  panel.outbox = panel.outbox.filter((a) => !acked.has(a.token));
  panel.sets = (data && data.sets) || [];
  const tokens = new Set(panel.sets.map((s) => s.token));
  for (const token of [...panel.srcs.keys()]) if (!tokens.has(token)) panel.srcs.delete(token);
  for (const s of panel.sets) {
    if (s.candidates.every((c) => c.src)) panel.srcs.set(s.token, s.candidates.map((c) => c.src));
  }
  const missing = panel.sets.filter((s) => !panel.srcs.has(s.token)).map((s) => s.token);
  if (missing.length && missing.join() !== panel.asked) {
    panel.asked = missing.join();
    setStateValue("need", { id: `${Date.now()}-${Math.random()}`, tokens: missing });
  }
  const known = new Set([...panel.sets.map((s) => s.token), ...panel.outbox.map((a) => a.token)]);
  for (const token of [...panel.answered]) if (!known.has(token)) panel.answered.delete(token);
  show(panel);
}

// The Create panel: a prompt box; the candidates drawn for it; keep one (click or 1-4: the PNG downloads at
// once) or say none is good (N); U (or Undo) takes the answer back for a few seconds.
//
// Data from Python: {set: {token, key, prompt, version, candidates: [{id, name, src?}], answer}, acked:
// [answer id], done: [request id], status: {id, text}, undo_s, n, max_chars, panel_id}. `answer` is what the server
// recorded for the set ({choice, winner_id} or null); images (src: PNGs that carry the download's text
// chunks) come with the set until the panel reports that it holds them ({held: token}); a panel that
// lacks them reports so ({held: "none:<id>"}), and they come again.
// State to Python: {request: {id, prompt}, outbox: [{id, token, choice, winner_id, ms}], held: token}.
//
// As on the Rate page, an answer shows at once and travels afterwards: the outbox holds every answer the
// server has not acknowledged, so none is lost to a rerun in flight, and the server records each once.
// Once the outbox is empty the page shows what the server recorded (an undo that came too late, say).
// A request for candidates carries its own id: the server draws one set per id, however often it is sent.
// uid, make, button, setStatus, typing, digitOf and squareLayout come from panel_common.js.

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function codePoints(text) {
  return [...text].length; // as Python counts a prompt's characters
}

function countLine(panel) {
  const n = codePoints(panel.input.value.trim());
  panel.count.textContent = `${n} / ${panel.maxChars}`;
}

function request(panel) {
  const text = panel.input.value;
  const n = codePoints(text.trim());
  if (n === 0) {
    setStatus(panel, "Type a prompt first.");
    return;
  }
  if (n > panel.maxChars) {
    setStatus(panel, `Your prompt is ${n} characters; the limit is ${panel.maxChars}.`);
    return;
  }
  if (panel.pending && performance.now() - panel.pending.at < 30000) return; // one at a time: each is answered
  const pending = { id: uid(), at: performance.now(), tries: 1 };
  panel.pending = pending;
  panel.setStateValue("request", { id: pending.id, prompt: text });
  panel.createBtn.disabled = true;
  setStatus(panel, `Drawing ${plural(panel.n, "candidate")}\u2026`);
  // Not answered in 5 s (the model's first load, or an answer lost to a run cut short): ask again under the
  // same id, which the server draws for once; the state changes, so the server runs again.
  const again = () => {
    if (panel.pending !== pending || !panel.root.isConnected) return;
    pending.tries += 1;
    panel.setStateValue("request", { id: pending.id, prompt: text, try: pending.tries });
    setTimeout(again, 5000);
  };
  setTimeout(again, 5000);
}

function blobUrl(src) {
  const bin = atob(src.split(",", 2)[1]);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) bytes[i] = bin.charCodeAt(i);
  return URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
}

// Point the Download link at candidate i of the set on screen; `now`: and download it (a keep).
function offerDownload(panel, i, now) {
  const set = panel.set;
  const srcs = panel.srcs.get(set.token);
  if (!srcs) return;
  if (panel.link.dataset.for !== `${set.token}:${i}`) {
    if (panel.link.href.startsWith("blob:")) URL.revokeObjectURL(panel.link.href);
    panel.link.href = blobUrl(srcs[i]);
    panel.link.download = set.candidates[i].name;
    panel.link.dataset.for = `${set.token}:${i}`;
  }
  if (now) panel.link.click();
}

function answer(panel, choice, i) {
  const set = panel.set;
  if (!set || panel.answer || !panel.srcs.has(set.token)) return; // one answer a set; Undo first to change it
  const winnerId = choice === "pick" ? set.candidates[i].id : null;
  const now = performance.now();
  const entry = { id: uid(), token: set.token, choice, winner_id: winnerId, ms: Math.round(now - panel.shownAt) };
  panel.outbox.push(entry);
  panel.answer = { choice, winner_id: winnerId };
  panel.last = { entry, token: set.token, at: now };
  panel.setStateValue("outbox", panel.outbox.slice());
  if (choice === "pick") {
    offerDownload(panel, i, true);
    setStatus(panel, `Kept ${i + 1}: ${set.candidates[i].name}. U takes it back.`);
  } else {
    setStatus(panel, "None good: noted. Try other words, or press U to take it back.");
  }
  render(panel);
}

function undo(panel) {
  const last = panel.last;
  if (!last || !panel.set || last.token !== panel.set.token || performance.now() - last.at > panel.undoMs) {
    setStatus(panel, "Nothing to undo.");
    return;
  }
  panel.last = null;
  // The answer leaves the outbox (if the server has not seen it, it never will) and an undo entry takes
  // its place, in the same ordered list, so the server handles it after the answer and before the next.
  panel.outbox = panel.outbox.filter((a) => a.id !== last.entry.id);
  panel.outbox.push({ id: uid(), token: last.token, choice: "undo", winner_id: null, ms: null });
  panel.answer = null;
  panel.setStateValue("outbox", panel.outbox.slice());
  setStatus(panel, "Undone: keep another, or say none is good.");
  render(panel);
}

function build(panel, set, srcs) {
  panel.grid.replaceChildren();
  set.candidates.forEach((c, i) => {
    const img = new Image();
    img.alt = `Candidate ${i + 1}`;
    img.src = srcs[i];
    const cell = button("", "pl-cand", `Keep ${i + 1} (key ${i + 1})`, () => answer(panel, "pick", i));
    cell.setAttribute("aria-label", `Keep ${i + 1}`);
    cell.dataset.id = String(c.id);
    cell.append(img, make("span", "pl-num", String(i + 1)));
    panel.grid.appendChild(cell);
  });
  panel.built = set.token;
}

function render(panel) {
  const set = panel.set;
  const srcs = set && panel.srcs.get(set.token);
  panel.sets_el.hidden = !srcs;
  panel.waiting.hidden = Boolean(srcs);
  panel.waiting.textContent = set ? "Loading the candidates\u2026"
    : `Type a prompt and press Enter: ${plural(panel.n, "candidate")} appear here; keep the one you like.`;
  if (srcs && panel.built !== set.token) build(panel, set, srcs);
  if (set) {
    panel.sets_el.dataset.key = set.key;
    panel.sets_el.dataset.token = set.token;
    panel.promptEl.textContent = set.prompt;
  }
  const kept = panel.answer && panel.answer.choice === "pick" ? panel.answer.winner_id : null;
  panel.sets_el.classList.toggle("pc-answered", Boolean(panel.answer));
  panel.sets_el.dataset.answer = panel.answer ? panel.answer.choice : "";
  for (const cell of panel.grid.children) cell.classList.toggle("pc-kept", kept !== null && cell.dataset.id === String(kept));
  const keptAt = set && kept !== null ? set.candidates.findIndex((c) => c.id === kept) : -1;
  if (keptAt >= 0) offerDownload(panel, keptAt, false);
  panel.link.hidden = keptAt < 0;
  panel.noneBtn.disabled = !srcs || Boolean(panel.answer);
  panel.undoBtn.disabled = !panel.last;
  squareLayout(panel.root, set ? set.candidates.length : panel.n,
               panel.form.offsetHeight + panel.status.offsetHeight + 34 + panel.row.offsetHeight + 30);
}

function onKey(ev) {
  const panel = window.__pickloopCreate;
  if (!panel || !panel.root.isConnected) return;
  if (ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
  const k = (ev.key || "").toLowerCase();
  const i = digitOf(ev);
  if (k === "/") {
    panel.input.focus();
  } else if (k === "u") {
    undo(panel);
  } else if (k === "n" && !ev.shiftKey) {
    answer(panel, "none");
  } else if (i >= 1 && panel.set && i <= panel.set.candidates.length && !ev.shiftKey) {
    answer(panel, "pick", i - 1);
  } else {
    return;
  }
  ev.preventDefault();
  ev.stopPropagation();
}

function mountCreate(parentElement) {
  const root = make("div", "pl-panel pc-panel");
  const form = make("div", "pc-form");
  const input = make("input", "pc-input");
  input.type = "text";
  input.placeholder = "Describe the image you want (press / to come back here)";
  input.setAttribute("aria-label", "Prompt");
  const count = make("span", "pc-count");
  const status = make("p", "pl-status", "\u00a0");
  status.setAttribute("aria-live", "polite");
  const sets_el = make("div", "pc-set");
  const promptEl = make("h3", "pl-prompt");
  const grid = make("div", "pl-grid");
  sets_el.append(promptEl, grid);
  const waiting = make("p", "pl-waiting");
  const row = make("div", "pl-row");
  root.append(form, status, sets_el, waiting, row);
  parentElement.appendChild(root);
  const panel = { root, form, input, count, status, sets_el, promptEl, grid, waiting, row, srcs: new Map(),
                  outbox: [], set: null, answer: null, last: null, pending: null, built: null, shownAt: 0,
                  undoMs: 8000, n: 4, maxChars: 300, held: undefined, askedAt: 0, lastServerStatus: null };
  panel.createBtn = button("Create", "pl-btn pc-create", "draw candidates for this prompt (Enter)", () => request(panel));
  panel.createBtn.style.flex = "0 0 auto";
  form.append(input, count, panel.createBtn);
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.isComposing) { ev.preventDefault(); request(panel); }
    if (ev.key === "Escape") input.blur();
  });
  input.addEventListener("input", () => countLine(panel));
  panel.noneBtn = button("None good", "pl-btn", "key N: not one of them is what you asked for", () => answer(panel, "none"));
  panel.undoBtn = button("Undo", "pl-btn", "key U: take back your answer", () => undo(panel));
  panel.link = make("a", "pl-btn pc-download", "Download again");
  panel.link.hidden = true;
  row.append(panel.noneBtn, panel.undoBtn, panel.link);
  window.addEventListener("resize", () => render(panel));
  return panel;
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const d = data || {};
  // Kept on the window as the rating panel is (keptPanel): a remount keeps the outbox, the images and the
  // answer, and sends what the server has not acknowledged again.
  const [panel, how] = keptPanel("__pickloopCreate", d, parentElement, setStateValue, mountCreate, () => {}, onKey);
  if (how === "new" && !d.set) panel.input.focus(); // a fresh page: ready to type
  if (how === "moved") {
    panel.held = undefined; // the server may have forgotten what this page holds: say it again
    if (panel.outbox.length) setStateValue("outbox", panel.outbox.slice());
  }
  panel.undoMs = 1000 * (d.undo_s ?? 8);
  panel.n = d.n || panel.n;
  panel.maxChars = d.max_chars || panel.maxChars;
  countLine(panel);
  const acked = new Set(d.acked || []);
  panel.outbox = panel.outbox.filter((a) => !acked.has(a.id));
  if (panel.pending && (d.done || []).includes(panel.pending.id)) {
    panel.pending = null;
    panel.createBtn.disabled = false;
  }
  const set = d.set || null;
  if (set && (!panel.set || panel.set.token !== set.token)) { // a new set on screen
    panel.set = set;
    panel.answer = set.answer || null;
    panel.last = null; // undo takes back an answer to the set on screen only
    panel.shownAt = performance.now();
    if (document.activeElement === panel.input) panel.input.blur(); // so that 1-4 keep at once
  } else if (set) {
    panel.set = set;
    if (panel.outbox.length === 0) panel.answer = set.answer || null; // nothing in flight: the server's word
  }
  if (set && set.candidates.every((c) => c.src)) panel.srcs.set(set.token, set.candidates.map((c) => c.src));
  for (const token of [...panel.srcs.keys()]) if (!set || token !== set.token) panel.srcs.delete(token);
  const held = set && panel.srcs.has(set.token) ? set.token : null;
  const now = performance.now();
  if (held && panel.held !== held) {
    panel.held = held; // the server stops sending them
    setStateValue("held", held);
  } else if (set && !held && (panel.held !== null || now - panel.askedAt > 1500)) {
    panel.held = null; // e.g. a panel mounted afresh, while the server still thinks the old one holds them
    panel.askedAt = now;
    setStateValue("held", `none:${uid()}`);
  }
  if (d.status && d.status.id !== panel.lastServerStatus) {
    panel.lastServerStatus = d.status.id;
    setStatus(panel, d.status.text);
  }
  render(panel);
}

// Helpers shared by the rating panel and the Create panel; each panel's script is this file followed by
// its own (rating_panel.py and create_panel.py join them).

let seq = 0;

function uid() {
  seq += 1;
  return `${Date.now().toString(36)}-${seq}-${Math.random().toString(36).slice(2, 8)}`;
}

function make(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// A button whose second click of a double click (event.detail > 1) does nothing: it must never
// answer the set that has just appeared.
function button(label, cls, title, onClick) {
  const b = make("button", cls, label);
  b.type = "button";
  b.title = title;
  b.addEventListener("click", (ev) => { if (ev.detail <= 1) onClick(ev); });
  return b;
}

function setStatus(panel, text) {
  panel.status.textContent = text || "\u00a0";
}

// Whether a key press belongs to a text field (hotkeys leave it alone).
function typing(ev) {
  const t = ev.target;
  return Boolean(t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName)));
}

// The digit 1-9 a key press names (from the key code, so Shift+1 still names 1), or 0.
function digitOf(ev) {
  const digit = /^Digit([1-9])$/.exec(ev.code || "");
  if (digit) return Number(digit[1]);
  const k = ev.key || "";
  return /^[1-9]$/.test(k) ? Number(k) : 0;
}

// Give n candidates the largest square that fits: try one row, 2x2 and one column against the width and
// the height left in the viewport under the panel's top less `chrome` px (its other lines); one column on
// a phone. Sets --pl-cols and --pl-side on `root`.
function squareLayout(root, n, chrome) {
  const width = root.clientWidth || window.innerWidth;
  const top = root.getBoundingClientRect().top + (window.scrollY || 0);
  const height = Math.max(160, window.innerHeight - Math.max(0, Math.min(top, 260)) - chrome);
  const gap = 12;
  let best = { side: 0, cols: 1 };
  const options = width < 600 ? [1] : [...new Set([n, 2, 1])];
  for (const cols of options) {
    const rows = Math.ceil(n / cols);
    const side = Math.floor(Math.min((width - gap * (cols - 1) - 8) / cols, (height - gap * (rows - 1)) / rows));
    if (side > best.side) best = { side, cols };
  }
  if (width < 600) best.side = Math.floor(width - 8);
  root.style.setProperty("--pl-cols", String(best.cols));
  root.style.setProperty("--pl-side", `${Math.max(96, best.side)}px`);
}

// The panel of server-side panel `d.panel_id`, kept on the window under `key`: when Streamlit mounts the
// component anew (a new parentElement, e.g. back from another page), the same panel moves there with its
// outbox, its unacknowledged answers, its images and its undo, so nothing is lost or shown twice. A new
// server-side panel gets a new one (`drop` tidies the old one first). Keys are listened to once per
// window (`onKey`, captured). Returns [panel, how]: "new", "moved" or "same".
function keptPanel(key, d, parentElement, setStateValue, mount, drop, onKey) {
  let panel = window[key];
  let how = "same";
  if (!panel || panel.id !== d.panel_id) {
    if (panel) { drop(panel); panel.root.remove(); }
    panel = mount(parentElement);
    panel.id = d.panel_id;
    how = "new";
  } else if (panel.root.parentElement !== parentElement) {
    parentElement.appendChild(panel.root);
    how = "moved";
  }
  panel.setStateValue = setStateValue;
  window[key] = panel;
  if (!window[`${key}Keys`]) {
    window[`${key}Keys`] = true;
    document.addEventListener("keydown", onKey, true);
  }
  return [panel, how];
}

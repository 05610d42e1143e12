// The label page's script (autofeedback label): served at /static/label.js by autofeedback/label_server.py.
// The page's settings (mode, the per-server token, the annotator) are the JSON block #conf of index.html.
const CONF = JSON.parse(document.getElementById("conf").textContent);
const KEYS = CONF.mode === "pointwise"
  ? [["G", "good / aligned", {label: "good"}, "good"], ["B", "bad / not aligned", {label: "bad"}, "bad"]]
  : [["A", "left is better", {choice: "A"}, ""], ["B", "right is better", {choice: "B"}, ""],
     ["T", "tie", {choice: "tie"}, ""]];
let item = null, busy = false;
const $ = (id) => document.getElementById(id);
const who = () => $("annotator").value.trim();

function status(msg, err) { $("status").textContent = msg || ""; $("status").className = err ? "error" : ""; }

function showProgress(p) {
  if (!p || p.labeled === undefined) return;
  $("progress").textContent = `${p.labeled} / ${p.total} labeled` + (p.skipped ? ` (${p.skipped} skipped)` : "");
  $("bar").firstElementChild.style.width = (100 * p.labeled / Math.max(1, p.total)) + "%";
}

function show(it) {
  item = it;
  $("done").style.display = it ? "none" : "block";
  $("images").innerHTML = ""; $("prompt").textContent = it ? it.prompt : ""; $("meta").textContent = "";
  if (!it) return;
  $("meta").textContent = (it.category ? "category: " + it.category + " · " : "") + "item " + it.item_id;
  it.images.forEach((src, i) => {
    const f = document.createElement("figure"), img = document.createElement("img");
    img.src = src; img.alt = it.image_ids[i]; img.dataset.imageId = it.image_ids[i];
    f.appendChild(img);
    if (CONF.mode === "pairwise") {
      const c = document.createElement("figcaption"); c.textContent = i ? "B (right)" : "A (left)"; f.appendChild(c);
    }
    $("images").appendChild(f);
  });
}

async function api(method, path, body) {
  const opt = {method, headers: {"Content-Type": "application/json"}};
  if (body) opt.body = JSON.stringify({...body, token: CONF.token, annotator: who()});
  const r = await fetch(path, opt);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.status);
  return data;
}

async function next() {
  if (!who()) {
    status("type your name (annotator) to start", true); show(null); $("done").style.display = "none"; return;
  }
  const d = await api("GET", "/api/next?annotator=" + encodeURIComponent(who()));
  show(d.item); showProgress(d.progress);
}

async function act(path, extra) {
  if (busy || !who()) return;
  if (path !== "/api/undo" && !item) return;
  busy = true;
  try {
    const d = await api("POST", path, path === "/api/undo" ? {} : {item_id: item.item_id, ...extra});
    if (path === "/api/undo") {
      status(d.undone ? "undone" : "nothing to undo");
      if (d.item) { show(d.item); showProgress(d.progress); } else await next();
    } else { status(path === "/api/skip" ? "skipped" : "saved"); await next(); }
  } catch (e) { status(String(e.message || e), true); }
  finally { busy = false; }
}

function setup() {
  const bar = $("buttons");
  for (const [k, text, body, cls] of KEYS) {
    const b = document.createElement("button"); b.className = cls; b.innerHTML = `<kbd>${k}</kbd> ${text}`;
    b.onclick = () => act("/api/label", body); bar.appendChild(b);
  }
  const s = document.createElement("button"); s.innerHTML = "<kbd>S</kbd> skip"; s.onclick = () => act("/api/skip", {});
  const u = document.createElement("button"); u.innerHTML = "<kbd>U</kbd> undo"; u.onclick = () => act("/api/undo");
  bar.append(s, u);
  $("keys").innerHTML = "Keys: " + KEYS.map(([k, t]) => `<kbd>${k}</kbd> ${t}`).join(" · ")
    + " · <kbd>S</kbd> skip · <kbd>U</kbd> or <kbd>Backspace</kbd> undo";
  const saved = new URLSearchParams(location.search).get("annotator") || CONF.annotator
    || localStorage.getItem("autofeedback-annotator") || "";
  $("annotator").value = saved;
  $("annotator").addEventListener("change", () => {
    localStorage.setItem("autofeedback-annotator", who()); status(""); next().catch(e => status(e.message, true));
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key.toUpperCase();
    const hit = KEYS.find(([key]) => key === k);
    if (hit) { e.preventDefault(); act("/api/label", hit[2]); }
    else if (k === "S") { e.preventDefault(); act("/api/skip", {}); }
    else if (k === "U" || e.key === "Backspace") { e.preventDefault(); act("/api/undo"); }
  });
  next().catch(e => status(e.message, true));
}
setup();

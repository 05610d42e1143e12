#!/usr/bin/env bash
# Wheel smoke test: what `pip install .` (not -e) gives a user works outside the repository.
#   build the wheel from the source tree -> fresh venv (CPU torch first, then the wheel) -> from a folder
#   outside the repo: `autofeedback --help`, every built-in judge template loads from the installed package,
#   one judge run against the local OpenAI-protocol checker server writes ok judgments, `eval` renders the HTML
#   report from its template and the label page serves its static files.
# Offline from the Hugging Face Hub (pip still needs its index or cache). Usage: .ci/wheel_smoke.sh [PYTHON]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONNOUSERSITE=1 OMP_NUM_THREADS=1
unset PYTHONPATH VIRTUAL_ENV  # the installed package only, never the source tree
WORK="$(mktemp -d "${TMPDIR:-/tmp}/autofeedback-wheel-smoke.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  # in the background: deleting a 2 GB venv takes ~40 s on a disk mounted with `discard`, and nothing waits for it
  nohup rm -rf "$WORK" </dev/null >/dev/null 2>&1 &
}
trap cleanup EXIT
step() { printf '[wheel-smoke %3ds] %s\n' "$SECONDS" "$*"; }
quiet() {  # pip's output goes to a log, shown only when the step fails
  "$@" >>"$WORK/pip.log" 2>&1 || { rc=$?; tail -n 40 "$WORK/pip.log" >&2; return "$rc"; }
}

# 1. Build from a copy of the files git knows (tracked + untracked-not-ignored): no stale build/ or egg-info.
step "build wheel"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/outside"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
     | while IFS= read -r -d '' f; do [ -e "$f" ] && [ "${f#data/}" = "$f" ] && printf '%s\0' "$f"; done \
     | tar --null -T - -cf -) | tar -C "$WORK/src" -xf -
else
  tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' --exclude=./runs \
      --exclude=./data -cf - . | tar -C "$WORK/src" -xf -
fi
quiet timeout 300 "$PY" -m pip wheel --no-deps "$WORK/src" -w "$WORK/dist"
WHEEL="$(ls "$WORK"/dist/autofeedback-*.whl)"
step "built $(basename "$WHEEL")"

# 2. Fresh venv: CPU torch first (a plain torch requirement would pull CUDA wheels), then the wheel.
step "fresh venv + install"
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
quiet timeout 600 "$V/pip" install --no-compile torch==2.13.0  # --no-compile: no .pyc for all of torch
quiet timeout 600 "$V/pip" install --no-compile "$WHEEL"
step "installed: $("$V/pip" list 2>/dev/null | grep -iE '^(autofeedback|torch) ' | tr -s ' ' | paste -sd, -)"

cd "$WORK/outside"
# 3. The CLI.
timeout 120 "$V/autofeedback" --help > help.txt
grep -q "judge" help.txt && grep -q "serve-checker" help.txt
step "autofeedback --help ok"

# 4. Every built-in template, loaded through the installed package (not the source tree).
timeout 120 "$V/python" - <<'EOF'
import autofeedback, sys
from pathlib import Path
from autofeedback.judges.templates import DEFAULT_TEMPLATES, TASK_MODE, Template, builtin_templates

assert Path(autofeedback.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), autofeedback.__file__
found = builtin_templates()
assert set(DEFAULT_TEMPLATES.values()) <= set(found), sorted(found)
names = [Template.load(stem, TASK_MODE[Template(res).task]).name for stem, res in sorted(found.items())]
names += [Template.load(None, mode).name for mode in DEFAULT_TEMPLATES]  # the default of every mode
print("templates:", ", ".join(sorted(set(names))))
EOF
step "every template loads"

# 5. One judge run against the local checker server on a free loopback port.
PORT="$("$V/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$V/autofeedback" serve-checker --port "$PORT" > server.log 2>&1 &
SERVER_PID=$!
timeout 60 "$V/python" - "$PORT" <<'EOF'
import sys, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=1).read()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the checker server did not answer")
EOF
timeout 120 "$V/python" -c 'from pathlib import Path; from autofeedback.shapes.demo import make_rendered_run
make_rendered_run(Path("run"), n_prompts=2, per_prompt=2)'
timeout 300 "$V/autofeedback" judge run --judge openai:shapes-checker --base-url "http://127.0.0.1:$PORT/v1" \
  --timeout 10 | tail -n 3
timeout 120 "$V/python" - <<'EOF'
from pathlib import Path
from autofeedback import tables

rows = tables.read(tables.table_path(Path("run"), "judgments"), "judgments").to_pylist()
ok = [r for r in rows if r["status"] == "ok"]
assert len(rows) == 4 and len(ok) == 4, [(r["status"], r.get("error")) for r in rows]
assert all(r["template"].startswith("pointwise_binary.v1@") for r in ok)
print(f"judgments: {len(ok)}/{len(rows)} ok, template {ok[0]['template']}, judge {ok[0]['judge']}")
EOF
step "judge against the local server ok"

# 6. The HTML report (a Jinja2 template) and the label page's static files, from the installed package data.
timeout 300 "$V/autofeedback" eval run | tail -n 1
timeout 120 "$V/python" - <<'EOF'
import urllib.request
from pathlib import Path
from autofeedback.config import LabelConfig
from autofeedback.label_server import LabelServer

page = Path("run/report/report.html").read_text()
assert "<h2>Judge health</h2>" in page and "data:image/png;base64," in page and "{{" not in page, page[:500]
with LabelServer(LabelConfig(run_dir=Path("run"), port=0, token="smoke")) as s:
    got = {p: urllib.request.urlopen(s.url + p, timeout=10).read().decode()
           for p in ("", "static/label.css", "static/label.js")}
assert '"token": "smoke"' in got[""] and "pixelated" in got["static/label.css"] and "CONF" in got["static/label.js"]
print(f"report.html {len(page)} chars; label page, label.css, label.js served")
EOF
step "report and label page from package data ok"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
step "passed ($WORK is removed in the background)"

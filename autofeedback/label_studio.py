"""Label Studio import/export for `autofeedback label` (--export-label-studio OUT / --import-label-studio FILE).

    export_label_studio(cfg, out)    every item as a Label Studio task (images as data URLs), with the run's labels
                                     as annotations -> OUT (JSON tasks) and OUT with .xml (the labeling config)
    import_label_studio(cfg, path)   a JSON export of those tasks -> RUN/human_labels.parquet

Items, keys and answers are the label page's (label_store.py), so labels round-trip between the two.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from . import tables
from .config import LabelConfig
from .errors import InputError
from .label_store import BadRequest, Store, item_key, label_id, live_labels

LS_CONFIG = {
    "pointwise": """<View>
  <Header value="$prompt"/>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="verdict" toName="image" choice="single" showInline="true" required="true">
    <Choice value="good" hotkey="g"/>
    <Choice value="bad" hotkey="b"/>
  </Choices>
</View>
""",
    "pairwise": """<View>
  <Header value="$prompt"/>
  <View style="display: flex; gap: 1em">
    <Image name="image_a" value="$image_a"/>
    <Image name="image_b" value="$image_b"/>
  </View>
  <Choices name="verdict" toName="image_a" choice="single" showInline="true" required="true">
    <Choice value="A" hotkey="a"/>
    <Choice value="B" hotkey="b"/>
    <Choice value="tie" hotkey="t"/>
  </Choices>
</View>
""",
}


def export_label_studio(cfg: LabelConfig, out: Path) -> dict:
    """Every item as a Label Studio task (images as data URLs), with the run's labels as annotations.

    Writes OUT (a JSON list of tasks, for Label Studio's import) and OUT with .xml: the labeling config."""
    store = Store(cfg)
    by_item: dict[str, list[dict]] = {}
    for r in live_labels(store.run_dir):
        if r["mode"] == store.mode and r["image_ids"]:
            by_item.setdefault(item_key(store.mode, r["image_ids"]), []).append(r)
    tasks, n_ann = [], 0
    for n, key in enumerate(store.order, start=1):
        item = store.shown(cfg.annotator or "", key)
        urls = []
        for iid in item["image_ids"]:
            data, ctype = store.png(iid) or (b"", "image/png")
            urls.append(f"data:{ctype};base64,{base64.b64encode(data).decode()}")
        data = {"prompt": item["prompt"], "item_id": key, "prompt_id": item["prompt_id"],
                "category": item["category"], "image_ids": item["image_ids"]}
        if store.mode == "pointwise":
            data["image"] = urls[0]
        else:
            data["image_a"], data["image_b"] = urls
        anns = []
        for r in by_item.get(key, []):
            if store.mode == "pointwise":
                if r["label"] is None:
                    continue
                value = "good" if r["label"] else "bad"
            else:
                value = ("tie" if r["choice"] == "tie" else "A" if r["choice"] == item["image_ids"][0] else "B")
            anns.append({"completed_by": {"email": r["annotator"]}, "was_cancelled": False,
                         "created_at": r["created_at"].isoformat() if r["created_at"] else None,
                         "result": [{"from_name": "verdict", "to_name": "image" if store.mode == "pointwise"
                                     else "image_a", "type": "choices", "value": {"choices": [value]}}]})
        n_ann += len(anns)
        tasks.append({"id": n, "data": data, "annotations": anns})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks))
    out.with_suffix(".xml").write_text(LS_CONFIG[store.mode])
    return {"tasks": len(tasks), "annotations": n_ann, "file": str(out), "config": str(out.with_suffix(".xml"))}


def import_label_studio(cfg: LabelConfig, path: Path) -> dict:
    """A Label Studio JSON export of tasks made by export_label_studio -> RUN/human_labels.parquet.

    Annotator: --annotator, else the annotation's completed_by (email, username or user id). Cancelled
    (skipped) annotations are left out; with several annotations of one item by one annotator, the last counts."""
    store = Store(cfg)
    path = Path(path)
    try:
        tasks = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise InputError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    rows: dict[str, dict] = {}
    cancelled = 0
    for i, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', i + 1) if isinstance(task, dict) else i + 1}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise InputError(f"{where}: no data object")
        ids = data.get("image_ids")
        key = data.get("item_id") or (item_key(store.mode, ids) if isinstance(ids, list) else None)
        if key not in store.items:
            raise InputError(f"{where}: item {key!r} is not a {store.mode} item of {store.run_dir} "
                             f"(export the tasks with --export-label-studio from this run and mode)")
        shown = ids if isinstance(ids, list) and sorted(ids) == sorted(store.items[key]["image_ids"]) \
            else store.items[key]["image_ids"]
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                cancelled += 1
                continue
            values = [c for res in ann.get("result") or [] if res.get("type") == "choices"
                      for c in (res.get("value") or {}).get("choices") or []]
            if not values:
                continue
            who = cfg.annotator or _ls_user(ann.get("completed_by"))
            try:
                answer = store._answer({"label": values[0]} if store.mode == "pointwise" else {"choice": values[0]},
                                       list(shown))
            except BadRequest as exc:
                raise InputError(f"{where}: {exc}") from None
            item = store.items[key]
            row = {"label_id": label_id(who, store.mode, shown), "annotator": who, "mode": store.mode,
                   "prompt_id": item["prompt_id"], "image_ids": list(shown), "category": item["category"],
                   **answer}
            rows[row["label_id"]] = row
    new = []
    for r in rows.values():
        old = store.done.get(r["annotator"], {}).get(item_key(store.mode, r["image_ids"]))
        if old is None or old.get("label") != r.get("label") or old.get("choice") != r.get("choice"):
            new.append({**r, "created_at": store._stamp()})
    with tables.run_lock(store.run_dir):
        tables.append(store.labels_path, new, "human_labels", tag="labelstudio")
        tables.compact(store.labels_path, "human_labels", min_shards=2)
    return {"tasks": len(tasks), "labels": len(rows), "written": len(new), "cancelled": cancelled,
            "annotators": sorted({r["annotator"] for r in rows.values()})}


def _ls_user(v) -> str:
    if isinstance(v, dict):
        v = v.get("email") or v.get("username") or v.get("id")
    if isinstance(v, int):
        return f"labelstudio-user-{v}"
    if isinstance(v, str) and v.strip():
        return v.strip()
    return "labelstudio"

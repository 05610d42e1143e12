"""pairs + import-labels: judgments and human labels -> preference pairs, labels, augmentations."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from autofeedback import judge, labels, pairs, tables
from autofeedback.config import ImportLabelsConfig, JudgeConfig, PairsConfig
from autofeedback.errors import InputError
from autofeedback.shapes.demo import make_rendered_run
from autofeedback.shapes.world import Scene, parse_prompt

from .conftest import REPO, cli

IMAGEREWARD = REPO / "data" / "imagereward" / "test.parquet"


def _read(run, name):
    return tables.read(tables.table_path(run, name), name, required=False).to_pylist()


def _import_imagereward(run: Path) -> dict:
    return labels.run(ImportLabelsConfig(file=IMAGEREWARD, run_dir=run, kind="rankings",
                                         column_map={"image_ids": "generations"}, annotator="imagereward-experts",
                                         suite="imagereward"))


# ------------------------------------------------------------------------------------ ImageReward
def test_imagereward_rankings_give_6399_strict_pairs_and_831_ties(tmp_path):
    run = tmp_path / "ir"
    s = _import_imagereward(run)
    assert (s["rows"], s["written"], s["prompts_added"]) == (466, 466, 463)
    assert (s["strict_pairs"], s["tied_pairs"]) == (6399, 831)
    assert _import_imagereward(run)["written"] == 0  # importing again adds nothing
    p = pairs.run(PairsConfig(run_dir=run, source="human_labels"))
    assert p["pairs"] == 6399 and p["ties"]["total"] == 831 and not p["ties"]["kept"]
    prefs = _read(run, "preferences")
    assert len(prefs) == 6399 and len({r["pair_id"] for r in prefs}) == 6399
    assert all(r["prompt"] and r["source"] == "human_labels:imagereward-experts/listwise" for r in prefs)
    # the direction agrees with the experts' ranks (1 = best)
    rank = {}
    for rec in labels.read_file(IMAGEREWARD).to_dict("records"):
        rank.update(dict(zip(rec["generations"], rec["ranking"])))
    assert all(rank[r["chosen_image_id"]] < rank[r["rejected_image_id"]] for r in prefs)
    r = prefs[0]
    assert r["pair_id"] == tables.content_id("pair", "human_labels", r["prompt_id"], r["chosen_image_id"],
                                             r["rejected_image_id"])
    # idempotent: the same options write nothing; keeping ties replaces the rows (7,230 = 6,399 + 831)
    assert pairs.run(PairsConfig(run_dir=run, source="human_labels"))["written"]["preferences"] is False
    pairs.run(PairsConfig(run_dir=run, source="human_labels", tie_policy="keep"))
    prefs = _read(run, "preferences")
    assert len(prefs) == 7230 and sum(r["margin"] == 0 for r in prefs) == 831


def test_import_labels_cli_and_pairs_cli(tmp_path):
    run = tmp_path / "ir"
    out = cli("import-labels", IMAGEREWARD, "--run", run, "--map", "image_ids=generations",
              "--annotator", "imagereward-experts", "--suite", "imagereward")
    assert out.returncode == 0, out.stderr
    assert "6399 strict pairs and 831 tied pairs" in out.stdout
    out = cli("pairs", run, "--source", "human_labels", "--max-pairs-per-prompt", "5")
    assert out.returncode == 0, out.stderr
    assert "ties dropped: 831" in out.stdout
    prefs = _read(run, "preferences")
    per_prompt = {}
    for r in prefs:
        per_prompt[r["prompt_id"]] = per_prompt.get(r["prompt_id"], 0) + 1
    assert max(per_prompt.values()) == 5
    bad = cli("import-labels", IMAGEREWARD, "--run", run, "--map", "image_ids=nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------- the shapes world
def test_pointwise_checker_pairs_labels_and_augmentations(tmp_path):
    run = make_rendered_run(tmp_path / "run", n_prompts=8, per_prompt=3, seed=0)
    judge.run(JudgeConfig(run_dir=run, judge="shapes"))
    verdict = {r["image_ids"][0]: r for r in _read(run, "judgments")}
    s = pairs.run(PairsConfig(run_dir=run))
    prefs = _read(run, "preferences")
    # aligned vs not aligned, within a prompt
    expected = 0
    by_prompt = {}
    for r in verdict.values():
        by_prompt.setdefault(r["prompt_id"], []).append(r["label"])
    for labs in by_prompt.values():
        expected += sum(labs) * (len(labs) - sum(labs))
    assert s["pairs"] == len(prefs) == expected > 0
    for r in prefs:
        assert verdict[r["chosen_image_id"]]["label"] and not verdict[r["rejected_image_id"]]["label"]
        assert verdict[r["chosen_image_id"]]["prompt_id"] == r["prompt_id"] == verdict[r["rejected_image_id"]]["prompt_id"]
        assert r["margin"] == 1.0 and r["agreement"] == 1.0 and r["source"] == "judgments:shapes/pointwise"
    lab = _read(run, "labels")
    assert len(lab) == 24 and all(r["label"] == verdict[r["image_id"]]["label"] for r in lab)
    assert all(r["score"] == verdict[r["image_id"]]["score"] and r["judges"] == ["shapes/pointwise"] for r in lab)
    aug = _read(run, "augmentations")
    assert len(aug) == 24
    for r in aug:
        truth = parse_prompt(r["prompt"])
        assert len(r["perturbed"]) == 3 and len(set(r["perturbed"])) == 3
        assert set(r["changed"]) == {"count", "color", "background"}
        for text, field in zip(r["perturbed"], r["changed"]):
            other = parse_prompt(text)  # a valid shapes prompt
            diff = [k for k in ("count", "color", "shape", "background")
                    if getattr(other, k) != getattr(truth, k)]
            assert diff == [field]
    # score margins with a threshold: scores are fractions of concepts right (1.0 vs 0.75 when a count is wrong)
    s2 = pairs.run(PairsConfig(run_dir=run, pointwise_value="score", min_margin=0.2))
    prefs = _read(run, "preferences")
    assert s2["pairs"] == len(prefs) >= s["pairs"]
    for r in prefs:
        assert r["margin"] >= 0.2
        assert verdict[r["chosen_image_id"]]["score"] - verdict[r["rejected_image_id"]]["score"] == r["margin"]
    s3 = pairs.run(PairsConfig(run_dir=run, pointwise_value="score", min_margin=0.3))
    small = sum(r["margin"] < 0.3 for r in prefs)
    assert small > 0 and s3["ties"]["below_min_margin"] == small and s3["pairs"] == s2["pairs"] - small


def test_pairwise_only_order_consistent_verdicts(tmp_path, server):
    run = make_rendered_run(tmp_path / "run", n_prompts=8, per_prompt=3, seed=2)
    server.set_position_bias(0.5)  # half the answers say "A" whatever the images: some pairs flip with the order
    js = judge.run(JudgeConfig(run_dir=run, judge="openai:shapes-checker", base_url=server.base_url,
                               mode="pairwise", timeout=2.0, max_retries=1))
    rows = _read(run, "judgments")
    combined = judge.combine_orders(rows)
    s = pairs.run(PairsConfig(run_dir=run))
    info = s["voters"]["openai:shapes-checker/pairwise"]
    assert info["position_consistency"] == js["position_consistency"] < 1.0
    assert info["pairs_both_orders"] == js["pairs_both_orders"] == len(combined)
    want = {(c["choice"], next(i for i in c["image_ids"] if i != c["choice"]))
            for c in combined.values() if c["consistent"] and c["choice"] != "tie"}
    got = {(r["chosen_image_id"], r["rejected_image_id"]) for r in _read(run, "preferences")}
    assert got == want and got
    assert s["ties"]["position_inconsistent"] == sum(not c["consistent"] for c in combined.values())
    # --orders any: every order is a vote, so A + tie -> A (agreement 1/2); A vs B stays a tie
    pairs.run(PairsConfig(run_dir=run, orders="any"))
    prefs = _read(run, "preferences")
    assert len(prefs) >= len(got) and {r["agreement"] for r in prefs} <= {0.5, 1.0}


def test_listwise_all_pairs_of_a_ranking(tmp_path, server):
    run = make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=3, seed=3)
    judge.run(JudgeConfig(run_dir=run, judge="openai:shapes-checker", base_url=server.base_url, mode="listwise",
                          list_size=3, timeout=2.0, max_retries=1))
    rankings = [r for r in _read(run, "judgments") if r["status"] == "ok"]
    s = pairs.run(PairsConfig(run_dir=run, tie_policy="keep"))
    prefs = _read(run, "preferences")
    assert s["pairs"] == len(prefs) == 3 * len(rankings)
    pos = {i: k for r in rankings for k, i in enumerate(r["ranking"])}
    for r in prefs:
        assert pos[r["chosen_image_id"]] < pos[r["rejected_image_id"]]
        assert r["margin"] == pos[r["rejected_image_id"]] - pos[r["chosen_image_id"]]


# --------------------------------------------------------------------------------- several judges
def _judgment(judge_name, mode, ids, prompt="p1", status="ok", **result):
    return {"request_id": tables.content_id(judge_name, mode, ids, result, status), "judge": judge_name,
            "mode": mode, "template": "t.v1@abc", "prompt_id": prompt, "image_ids": ids, "status": status,
            "created_at": tables.now(), "details": "{}", **result}


def _write_judgments(run, rows):
    tables.append(tables.table_path(run, "judgments"), rows, "judgments")


def test_several_judges_majority_mean_and_no_dedupe(tmp_path):
    run = tmp_path / "run"
    _write_judgments(run, [
        _judgment("j1", "pairwise", ["a", "b"], choice="a"),
        _judgment("j2", "pairwise", ["b", "a"], choice="a"),
        _judgment("j3", "pairwise", ["a", "b"], choice="b"),
        _judgment("j1", "pairwise", ["a", "c"], choice="tie"),
        _judgment("j2", "pairwise", ["a", "c"], choice="c"),
        _judgment("s1", "pointwise", ["a"], score=9.0), _judgment("s1", "pointwise", ["b"], score=3.0),
    ])
    s = pairs.run(PairsConfig(run_dir=run, judges=["j1", "j2", "j3"]))
    prefs = {(r["chosen_image_id"], r["rejected_image_id"]): r for r in _read(run, "preferences")}
    # a-b: 2 of 3 judges say a; a-c: j1 says tie, j2 says c -> c, with 1 of 2 agreeing
    assert set(prefs) == {("a", "b"), ("c", "a")} and s["pairs"] == 2
    assert prefs[("a", "b")]["agreement"] == pytest.approx(2 / 3) and prefs[("c", "a")]["agreement"] == 0.5
    assert prefs[("a", "b")]["source"] == "judgments:majority(j1/pairwise+j2/pairwise+j3/pairwise)"
    assert prefs[("c", "a")]["source"] == "judgments:majority(j1/pairwise+j2/pairwise)"
    s = pairs.run(PairsConfig(run_dir=run, judges=["j1", "j3"]))  # a-b: 1 vs 1 -> a tie, dropped
    assert s["pairs"] == 0 and s["ties"]["total"] == 2 and _read(run, "preferences") == []
    # mean of signed margins across a pointwise (scores 9 vs 3) and a pairwise judge that disagrees
    _write_judgments(run, [_judgment("j4", "pairwise", ["a", "b"], choice="b")])
    pairs.run(PairsConfig(run_dir=run, judges=["s1", "j4"], combine="mean"))
    (r,) = _read(run, "preferences")
    assert (r["chosen_image_id"], r["margin"], r["agreement"]) == ("a", 2.5, 0.5)  # (6 - 1) / 2
    # no dedupe: one row per judge and pair
    pairs.run(PairsConfig(run_dir=run, judges=["j1", "j2", "j3"], dedupe=False))
    rows = _read(run, "preferences")
    assert sorted((r["source"], r["chosen_image_id"]) for r in rows) == [
        ("judgments:j1/pairwise", "a"), ("judgments:j2/pairwise", "a"), ("judgments:j2/pairwise", "c"),
        ("judgments:j3/pairwise", "b")]


# ------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_clear_errors(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(InputError, match="no judgments table"):
        pairs.run(PairsConfig(run_dir=run))
    _write_judgments(run, [_judgment("j1", "pairwise", ["a", "b"], status="api_error"),
                           _judgment("j1", "pointwise", ["a"], status="parse_error")])
    with pytest.raises(InputError, match=r"no ok rows .*api_error=1, parse_error=1"):
        pairs.run(PairsConfig(run_dir=run))
    with pytest.raises(InputError, match="no rows of judge 'nobody'; judges here: j1"):
        pairs.run(PairsConfig(run_dir=run, judges=["nobody"]))
    _write_judgments(run, [_judgment("j1", "telepathy", ["a", "b"], choice="a")])
    with pytest.raises(InputError, match="unknown mode 'telepathy' in 1 rows"):
        pairs.run(PairsConfig(run_dir=run))
    out = cli("pairs", run, "--mode", "telepathy")
    assert out.returncode == 2 and out.stderr.startswith("error: pairs: modes.0")


def test_bad_rows_are_dropped_and_counted(tmp_path):
    run = tmp_path / "run"
    _write_judgments(run, [
        _judgment("j1", "pairwise", ["a", "b"], choice="z"),          # a choice that is neither image
        _judgment("j1", "pairwise", ["a", "c"], choice="a"),
        _judgment("j1", "listwise", ["a", "b", "c"], ranking=["a", "b"]),  # not a permutation
        _judgment("j1", "listwise", ["d", "e", "f"], prompt="p2", ranking=["f", "e", "d"]),
    ])
    s = pairs.run(PairsConfig(run_dir=run))
    assert s["dropped"]["invalid_rows"] == 2 and s["pairs"] == 4
    assert "invalid rows 2" in pairs.format_summary(s)


def test_contradictory_human_labels_are_dropped_and_reported(tmp_path):
    run = tmp_path / "run"
    csv = tmp_path / "ratings.csv"
    csv.write_text("rater,img,text,ok,stars\n"
                   "ann1,x1,a red circle,yes,5\n"
                   "ann1,x2,a red circle,no,2\n"
                   "ann1,x3,a red circle,yes,4\n"
                   "ann1,x3,a red circle,no,4\n"       # ann1 says both yes and no for x3
                   "ann2,x1,a red circle,yes,4\n")
    s = labels.run(ImportLabelsConfig(file=csv, run_dir=run, column_map={"annotator": "rater", "image_id": "img",
                                                                          "prompt": "text", "label": "ok",
                                                                          "score": "stars"}))
    assert s["kind"] == "ratings" and s["written"] == 5 and s["contradictory"] == 1
    assert "contradictory: 1" in labels.format_summary(s)
    p = pairs.run(PairsConfig(run_dir=run, source="human_labels"))
    assert p["dropped"]["contradictory_labels"] == 1
    assert "contradictory labels 1" in pairs.format_summary(p)
    got = {(r["chosen_image_id"], r["rejected_image_id"], r["agreement"]) for r in _read(run, "preferences")}
    assert got == {("x1", "x2", 1.0)}  # x3 is out for ann1; ann2 rated only x1
    lab = {r["image_id"]: r for r in _read(run, "labels")}
    assert set(lab) == {"x1", "x2"} and lab["x1"]["score"] == 4.5 and lab["x1"]["judges"] == ["ann1/pointwise",
                                                                                             "ann2/pointwise"]
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,prompt,label\nx1,a cat,maybe\n")
    with pytest.raises(InputError, match=r"bad.csv: row 1: label 'maybe'"):
        labels.run(ImportLabelsConfig(file=bad, run_dir=run))


def test_import_choices_jsonl_and_pickapic_labels(tmp_path):
    run = tmp_path / "run"
    f = tmp_path / "choices.jsonl"
    rows = [{"prompt": "a dog", "image_0": "d1", "image_1": "d2", "label_0": 1, "label_1": 0},
            {"prompt": "a dog", "image_0": "d3", "image_1": "d2", "label_0": 0.5, "label_1": 0.5},
            {"prompt": "a dog", "left": "d3", "right": "d1", "pick": "right"}]
    f.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    s = labels.run(ImportLabelsConfig(file=f, run_dir=run, annotator="picker"))
    assert s["kind"] == "choices" and s["ties"] == 1
    g = tmp_path / "more.jsonl"
    g.write_text(json.dumps(rows[2]) + "\n")
    labels.run(ImportLabelsConfig(file=g, run_dir=run, annotator="picker", column_map={
        "image_0": "left", "image_1": "right", "choice": "pick"}))
    hl = _read(run, "human_labels")
    assert sorted(r["choice"] for r in hl) == ["d1", "d1", "tie"]
    pairs.run(PairsConfig(run_dir=run, source="human_labels"))
    got = {(r["chosen_image_id"], r["rejected_image_id"]) for r in _read(run, "preferences")}
    assert got == {("d1", "d2"), ("d1", "d3")}


def test_pairs_from_judgments_and_humans_live_side_by_side(tmp_path):
    run = make_rendered_run(tmp_path / "run", n_prompts=3, per_prompt=3, seed=0)
    judge.run(JudgeConfig(run_dir=run, judge="shapes"))
    pairs.run(PairsConfig(run_dir=run))
    n_judge = len(_read(run, "preferences"))
    _import_imagereward(run)
    pairs.run(PairsConfig(run_dir=run, source="human_labels"))
    rows = _read(run, "preferences")
    assert len(rows) == n_judge + 6399
    pairs.run(PairsConfig(run_dir=run))  # re-running one source leaves the other alone
    assert len(_read(run, "preferences")) == n_judge + 6399


def test_content_ids_match_content_id():
    cols = [pa.array(["a", "b\"q", "é", "x\\y"]), pa.array(["1", "2", "3", "4"])]
    got = pairs.content_ids("pair", *cols).to_pylist()
    assert got == [tables.content_id("pair", a, b) for a, b in zip(*(c.to_pylist() for c in cols))]
    plain = pairs.content_ids("pair", pa.array(["a", "b"]), "s").to_pylist()
    assert plain == [tables.content_id("pair", "a", "s"), tables.content_id("pair", "b", "s")]


def test_generic_perturbations_use_metadata_fields():
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 2}]}
    vocab = {"class": ["cat", "dog", "bird"], "count": [1, 2, 3]}
    out = pairs.perturbations("a photo of two dogs", meta, "geneval", vocab)
    assert ("a photo of three dogs", "count") in out and ("a photo of one dogs", "count") in out
    assert all(field in ("class", "count") for _, field in out)
    shapes = pairs.perturbations("two red circles on a blue background", Scene(2, "red", "circle", "blue").metadata(),
                                 "shapes", {})
    assert len(shapes) == 3 + 4 + 4  # other counts, colors (not blue), backgrounds (not red)


def test_split_filter_keeps_heldout_prompts_out_of_training_pairs(tmp_path):
    from autofeedback import judge, pairs, tables
    from autofeedback.config import JudgeConfig, PairsConfig
    from autofeedback.shapes.demo import make_rendered_run

    run_dir = make_rendered_run(tmp_path / "run", n_prompts=24, per_prompt=3, seed=5)
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    split_of = {r["prompt_id"]: r["split"] for r in tables.read(run_dir / "prompts.parquet", "prompts").to_pylist()}
    assert set(split_of.values()) == {"train", "heldout"}
    pairs.run(PairsConfig(run_dir=run_dir, split="train"))
    prefs = tables.read(run_dir / "preferences.parquet", "preferences").to_pylist()
    assert prefs and {split_of[p["prompt_id"]] for p in prefs} == {"train"}

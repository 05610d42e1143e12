"""The tiny shapes VLM (shapes/vlm_model.py, a transformers LLaVA) and serve-vlm (judges/vlm_server.py), with the
real `openai` client against the server on 127.0.0.1. Most tests use a random-weight VLM built from configs; the
last ones use the shipped data/models/shapes-vlm."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest

from autofeedback import tables
from autofeedback.judges import parsing
from autofeedback.judges.templates import Template

from .conftest import REPO, cli

SHIPPED_VLM = REPO / "data" / "models" / "shapes-vlm"


def _url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _render(prompt: str = "two red circles on a blue background", seed: int = 0):
    from autofeedback.shapes.world import parse_prompt, render

    return render(parse_prompt(prompt), seed)


def _judge_request(task="pointwise_binary", prompt="two red circles on a blue background", n_images=1, **kw):
    """The request the OpenAI judge sends (built-in template, structured output)."""
    mode = {"pointwise_binary": "pointwise", "pairwise": "pairwise"}[task]
    tpl = Template.load(None, mode)
    imgs = [_render(prompt, seed=i) for i in range(n_images)]
    content = [{"type": "text", "text": tpl.render({"prompt": prompt, "images": imgs})}] + [
        {"type": "image_url", "image_url": {"url": _url(im)}} for im in imgs]
    return dict(model="shapes-vlm", messages=[{"role": "system", "content": tpl.system},
                                              {"role": "user", "content": content}],
                response_format=parsing.response_format(task), temperature=0, **kw)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A random-weight shapes VLM of the shipped architecture (smaller), saved like the shipped one."""
    import torch

    from autofeedback.shapes import vlm_model as vm
    from autofeedback.shapes import vlm_recipe
    from autofeedback.shapes.suite import suite_records

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-vlm")
    records = [r for r in suite_records() if r["split"] == "train"][:12]
    tok = vm.train_tokenizer(vlm_recipe.corpus(records, np.random.default_rng(0)), 400)
    model = vm.build_model(tok, hidden=32, layers=1, heads=2)
    model.save_pretrained(out)
    vm.build_processor(tok).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm):
    from autofeedback.judges.vlm_server import VLMServer

    with VLMServer(tiny_vlm, batch_wait_ms=50, model_name="shapes-vlm", threads=1) as server:
        yield server


def _client(server, **kw):
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=60, **kw)


# ------------------------------------------------------------------------------------------ model + template
def test_chat_template_round_trip(tiny_vlm):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from autofeedback.shapes import vlm_model as vm

    proc = AutoProcessor.from_pretrained(tiny_vlm)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_vlm)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    msgs = vm.judge_messages("SYSTEM TEXT", "Prompt: <prompt>two red circles on a blue background</prompt>", 2)
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|system|>SYSTEM TEXT<|end|><|user|>Prompt: <prompt>two red circles on a blue background"
                    "</prompt><image><image><|end|><|assistant|>")
    assert proc.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == text
    enc = proc(text=[text], images=[_render(), _render(seed=1)], return_tensors="pt")
    image_id = proc.tokenizer.convert_tokens_to_ids(vm.IMAGE_TOKEN)
    assert int((enc.input_ids == image_id).sum()) == 2 * model.config.image_seq_length == 130  # 64 patches + class
    assert enc.pixel_values.shape == (2, 3, 32, 32)
    answer = '{"rationale": "two red circles on a blue background", "aligned": true}'
    ids = proc.tokenizer(answer, add_special_tokens=False).input_ids
    assert proc.tokenizer.decode(ids) == answer
    # an OpenAI request becomes the same chat messages + images
    req = _judge_request(n_images=1)
    chat, images = vm.chat_messages(req["messages"])
    assert [m["role"] for m in chat] == ["system", "user"] and len(images) == 1
    assert chat[1]["content"][-1] == {"type": "image"}


def test_schema_check():
    from autofeedback.judges.vlm_server import answer_errors

    fmt = parsing.response_format("pairwise")
    assert answer_errors('{"rationale": "x", "choice": "A"}', fmt) == []
    assert answer_errors('{"rationale": "x", "choice": "C"}', fmt)
    assert answer_errors('{"rationale": "x"}', fmt)
    assert answer_errors('{"rationale": "x", "choice": "A", "more": 1}', fmt)
    assert answer_errors('{"rationale": 3, "choice": "A"}', fmt)
    assert answer_errors('not json', fmt)
    assert answer_errors('[1]', {"type": "json_object"}) and not answer_errors('{}', {"type": "json_object"})
    assert answer_errors('anything', None) == []
    listwise = parsing.response_format("listwise")
    assert answer_errors('{"rationale": "", "ranking": [1, "2"]}', listwise)
    assert answer_errors('{"rationale": "", "ranking": [1, true]}', listwise)
    assert answer_errors('{"rationale": "x", "choice": "C"}', fmt)[0].startswith("$.choice: 'C' is not one of")


def test_invalid_response_schema_is_a_400():
    from autofeedback.judges.vlm_server import BadRequest, check_request

    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(BadRequest, match="not a valid JSON Schema"):
        check_request({"messages": msgs, "response_format": {"type": "json_schema",
                                                             "json_schema": {"schema": {"type": "no-such-type"}}}})


# ------------------------------------------------------------------------------------------ the server
def test_openai_client_gets_an_answer_with_usage(vlm_server):
    resp = _client(vlm_server).chat.completions.create(**_judge_request(max_tokens=12))
    choice = resp.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 64  # the text and the 65 image tokens
    assert 1 <= resp.usage.completion_tokens <= 2 * 13  # at most the answer and one validated-decoding retry
    extra = choice.model_extra or {}
    assert "x_schema_valid" in extra and "x_retried" in extra
    # a random model does not write the schema's JSON: the retry was made and the answer says it is invalid
    if not extra["x_schema_valid"]:
        assert extra["x_retried"] is True
    models = _client(vlm_server).models.list()
    assert [m.id for m in models.data] == ["shapes-vlm"]


def test_max_tokens_cuts_with_finish_reason_length(vlm_server):
    req = _judge_request(max_tokens=3)
    req.pop("response_format")
    resp = _client(vlm_server).chat.completions.create(**req)
    # a random model rarely ends within 3 tokens; if it did, the reason is stop
    assert resp.usage.completion_tokens <= 3
    assert resp.choices[0].finish_reason == ("length" if resp.usage.completion_tokens == 3 else "stop")


def test_32_concurrent_requests_are_batched(vlm_server):
    before = sum(size * n for size, n in vlm_server.batch_sizes.items())
    client = _client(vlm_server)
    results, errors = [None] * 32, []

    def one(i):
        try:
            prompt = ["one red circle on a blue background", "three green squares on a white background"][i % 2]
            results[i] = client.chat.completions.create(**_judge_request(prompt=prompt, n_images=1 + i % 2,
                                                                         task=("pointwise_binary", "pairwise")[i % 2],
                                                                         max_tokens=8))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and all(r is not None and r.choices[0].message.content is not None for r in results)
    sizes = vlm_server.batch_sizes
    assert sum(size * n for size, n in sizes.items()) - before == 32
    assert max(sizes) > 1, f"never batched: {sizes}"
    # requests with 1 and 2 images went through the same batches: prompt tokens differ by one image (64 tokens)
    assert {r.usage.prompt_tokens for r in results[1::2]} != {r.usage.prompt_tokens for r in results[::2]}


@pytest.mark.parametrize("bad, message", [
    ("not-a-data-url", "base64 data URL"),
    ("data:image/png;base64,!!!notbase64", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), "does not decode"),
])
def test_bad_image_is_a_clear_400(vlm_server, bad, message):
    import openai

    req = _judge_request()
    req["messages"][1]["content"][1]["image_url"]["url"] = bad
    with pytest.raises(openai.BadRequestError) as info:
        _client(vlm_server).chat.completions.create(**req)
    assert info.value.status_code == 400 and message in str(info.value)


def test_bad_requests_are_400(vlm_server):
    import httpx2 as httpx

    url = vlm_server.base_url + "/chat/completions"
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "x", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(url, json={**_judge_request(), "stream": True})
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "x", "messages": [{"role": "user", "content": [{"type": "audio"}]}]})
    assert r.status_code == 400 and "audio" in r.json()["error"]["message"]
    assert httpx.get(vlm_server.base_url + "/nothing").status_code == 404


def test_judge_cli_against_the_server_keeps_every_image(vlm_server, tmp_path):
    """`autofeedback judge RUN --judge openai:shapes-vlm --base-url ...`: one row per image, failures as statuses."""
    from autofeedback.shapes.demo import make_rendered_run

    run = make_rendered_run(tmp_path / "run", n_prompts=3, per_prompt=2)
    r = cli("judge", run, "--judge", "openai:shapes-vlm", "--base-url", vlm_server.base_url, "--mode", "pointwise",
            "--max-tokens", "24", "--concurrency", "6")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = tables.read(tables.table_path(run, "judgments"), "judgments").to_pylist()
    images = tables.read(tables.table_path(run, "images"), "images", columns=["image_id"]).to_pylist()
    assert sorted(r["image_ids"][0] for r in rows) == sorted(i["image_id"] for i in images)
    assert {r["status"] for r in rows} <= {"ok", "parse_error", "truncated"}
    assert all(r["raw_response"] and r["input_tokens"] > 64 for r in rows)
    assert all(r["label"] is not None for r in rows if r["status"] == "ok")


# ------------------------------------------------------------------------------------------ the shipped model
shipped = pytest.mark.skipif(not (SHIPPED_VLM / "config.json").exists(), reason="data/models/shapes-vlm not built")


CASES = [("one red circle on a green background", "one red circle on a green background", True),
         ("two yellow squares on a blue background", "two yellow squares on a blue background", True),
         ("three white triangles on a red background", "three white triangles on a red background", True),
         ("one red circle on a green background", "one red circle on a purple background", False),
         ("two yellow squares on a blue background", "two yellow triangles on a blue background", False),
         ("three white triangles on a red background", "three green triangles on a red background", False)]


def _ask_shipped(task_prompts):
    from autofeedback.judges.vlm_server import VLMServer

    with VLMServer(SHIPPED_VLM, threads=1) as server:
        client = _client(server)
        out = []
        for prompt, drawn, _ in task_prompts:
            req = _judge_request(prompt=prompt)
            req["messages"][1]["content"][1]["image_url"]["url"] = _url(_render(drawn, seed=7))
            out.append(client.chat.completions.create(**req).choices[0].message.content)
    return out


@shipped
def test_shipped_vlm_answers_yes_no_in_the_judges_format():
    """On renders of held-out prompts it answers the judge's pointwise JSON, and its rationale reads the image as
    the checker does."""
    from autofeedback.shapes import checker
    from autofeedback.shapes.world import parse_prompt

    cases = CASES + [(p, d.replace("one red circle", "two red circles").replace("three", "four"), t)
                     for p, d, t in CASES]
    answers = [parsing.parse("pointwise_binary", a) for a in _ask_shipped(cases)]  # raises if not the judge's format
    # the rationale is a per-concept checklist: "count 3 asked 3 ok; color white asked white ok; ..."
    read_right = 0
    for (prompt, drawn, _), ans in zip(cases, answers):
        observed = checker.check(np.asarray(_render(drawn, seed=7)), parse_prompt(prompt)).observed()
        seen = dict(part.split()[:2] for part in ans.rationale.split("; "))
        read_right += seen == observed
    # all four concepts read right by chance: ~1% of images; the shipped model reads 8/12 here (it undercounts 3-4
    # triangles), 27-29 of 32 counts on train renders (docs/experiments.md)
    assert read_right >= 7, f"read {read_right}/12 images as the checker does: {[a.rationale for a in answers]}"


@shipped
def test_shipped_vlm_verdicts_agree_with_the_checker_on_held_out_prompts():
    """Renders of 8 held-out prompts, as asked and with another count (the T2I model's usual error): its yes/no
    agrees with the checker on about 70% or more (the issue's lower bound; 85.6% on the T2I model's held-out samples)."""
    from autofeedback.shapes import checker
    from autofeedback.shapes.suite import suite_records
    from autofeedback.shapes.world import Scene, parse_prompt

    held = [r for r in suite_records() if r["split"] == "heldout"][::11][:8]
    cases = []
    for r in held:
        scene = Scene(**r["metadata"])
        other = Scene(**{**r["metadata"], "count": scene.count % 4 + 1})
        cases += [(r["prompt"], scene.prompt, None), (r["prompt"], other.prompt, None)]
    answers = [parsing.parse("pointwise_binary", a) for a in _ask_shipped(cases)]
    truth = [checker.check(np.asarray(_render(drawn, seed=7)), parse_prompt(prompt)).aligned
             for prompt, drawn, _ in cases]
    agree = sum(a.aligned == t for a, t in zip(answers, truth))
    assert agree >= 11, f"{agree}/16"  # ~70%; the shipped model: 13/16
    assert {True, False} <= set(truth)  # both verdicts occur: the test can fail


@shipped
def test_shipped_vlm_has_its_card_and_recipe():
    card = (SHIPPED_VLM / "README.md").read_text()
    recipe = json.loads((SHIPPED_VLM / "recipe.json").read_text())
    assert "vlm_recipe" in recipe["command"] and "LlavaForConditionalGeneration" in card
    size = sum(f.stat().st_size for f in SHIPPED_VLM.iterdir())
    assert size <= 20 * 2**20


def test_recipe_smoke_builds_a_loadable_folder(tmp_path):
    """The recipe end to end at toy size: a folder from_pretrained loads, with recipe.json and the model card."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from autofeedback.shapes import vlm_recipe

    out = tmp_path / "vlm"
    vlm_recipe.main(["--schedule", "single", "--out", str(out), "--steps", "3", "--t2i-per-prompt", "0",
                     "--per-prompt", "1", "--wrong", "1", "--hidden", "32", "--layers", "1", "--vocab", "500",
                     "--eval-n", "4", "--batch", "4",
                     "--clip", str(REPO / "data" / "models" / "shapes-clip")])
    model = LlavaForConditionalGeneration.from_pretrained(out)
    proc = AutoProcessor.from_pretrained(out)
    assert proc.tokenizer.chat_template and model.config.vision_config.hidden_size == 64  # shapes-CLIP's tower
    info = json.loads((out / "recipe.json").read_text())
    assert info["steps"] == 3 and info["train_images"] == 270 * 2 and set(info["quick_eval"]) == {"train", "heldout"}
    assert "--steps 3" in info["command"]
    assert "LlavaForConditionalGeneration" in (out / "README.md").read_text()


def test_recipe_schedule_is_one_command_that_resumes(tmp_path, capsys):
    """The shipped schedule (3 runs, each from the one before) at toy size: one command, the chain recorded in the
    final recipe.json and card; re-run, the finished stages are skipped; its per-stage flags are refused."""
    from autofeedback.shapes import vlm_recipe

    out, work = tmp_path / "vlm", tmp_path / "work"
    argv = ["--out", str(out), "--work", str(work), "--steps-scale", "0.002", "--t2i-per-prompt", "0",
            "--per-prompt", "1", "--wrong", "1", "--hidden", "32", "--layers", "1", "--vocab", "500",
            "--eval-n", "2", "--batch", "2", "--clip", str(REPO / "data" / "models" / "shapes-clip")]
    vlm_recipe.main(argv)
    info = json.loads((out / "recipe.json").read_text())
    chain = [info, info["init_recipe"], info["init_recipe"]["init_recipe"]]
    assert [r["steps"] for r in chain] == [2, 1, 2]  # 800, 500, 1200 x 0.002 (at least 1), last run first
    assert [r["stage"] for r in chain] == ["3/3", "2/3", "1/3"]
    assert chain[0]["init_from"] == str(work / "stage-2") and chain[1]["init_from"] == str(work / "stage-1")
    assert chain[2]["init_from"] is None and chain[0]["checklists"] and not chain[2]["checklists"]
    assert chain[0]["task_weights"].startswith("pointwise_binary=0.5")
    assert info["schedule_command"] == "python -m autofeedback.shapes.vlm_recipe " + " ".join(argv)
    card = (out / "README.md").read_text()
    assert info["schedule_command"] in card and "3 runs each continuing the one before" in card
    capsys.readouterr()
    (out / "recipe.json").unlink()  # as if killed in the last run: stages 1 and 2 are kept, the last is redone
    vlm_recipe.main(argv)
    printed = capsys.readouterr().out
    assert "stage 1/3: " + str(work / "stage-1") + " is done (resumed)" in printed
    assert "stage 2/3: " + str(work / "stage-2") + " is done (resumed)" in printed
    assert "stage 3/3: python -m autofeedback.shapes.vlm_recipe --schedule single --out " + str(out) in printed
    assert json.loads((out / "recipe.json").read_text())["init_recipe"] == info["init_recipe"]
    with pytest.raises(SystemExit):
        vlm_recipe.main(["--out", str(out), "--steps", "5"])
    assert "--steps: the shipped schedule sets these per stage" in capsys.readouterr().err
    for bad, message in ((["--steps-scale", "0"], "--steps-scale 0.0: must be > 0"),
                         (["--schedule", "single", "--steps-scale", "0.5"], "with --schedule single give --steps")):
        with pytest.raises(SystemExit):
            vlm_recipe.main(["--out", str(out), *bad])
        assert message in capsys.readouterr().err


def test_judge_stage_serves_a_model_folder_itself(tiny_vlm, tmp_path):
    """--base-url serve:FOLDER: the judge stage runs serve-vlm in-process for its requests (pipelines use this)."""
    from autofeedback import judge
    from autofeedback.config import JudgeConfig
    from autofeedback.errors import InputError
    from autofeedback.shapes.demo import make_rendered_run

    run = make_rendered_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    s = judge.run(JudgeConfig(run_dir=run, judge="openai:shapes-vlm", base_url=f"serve:{tiny_vlm}", mode="pairwise",
                              max_tokens=16))
    rows = tables.read(tables.table_path(run, "judgments"), "judgments").to_pylist()
    assert len(rows) == s["requests"] == 2 * 2  # one pair per prompt, both orders
    assert all(r["input_tokens"] > 128 for r in rows)  # two images' tokens: the model saw both
    again = judge.run(JudgeConfig(run_dir=run, judge="openai:shapes-vlm", base_url=f"serve:{tiny_vlm}",
                                  mode="pairwise", max_tokens=16))
    assert again["already_done"] == 4 and again["status"] == {}
    with pytest.raises(InputError, match="no model folder"):
        judge.run(JudgeConfig(run_dir=run, judge="openai:shapes-vlm", base_url=f"serve:{tmp_path}/nothing"))


def test_pipeline_resolves_serve_folder_against_base_dir(tmp_path):
    from autofeedback import run

    (tmp_path / "models" / "vlm").mkdir(parents=True)
    (tmp_path / "models" / "vlm" / "config.json").write_text("{}")
    (tmp_path / "pipes").mkdir()
    yml = tmp_path / "pipes" / "p.yaml"
    yml.write_text("base_dir: ..\nrun_dir: runs/x\nsteps:\n"
                   "  - judge: {judge: 'openai:shapes-vlm', base_url: 'serve:models/vlm', mode: pairwise}\n")
    _, _, configs = run.load_pipeline(yml)
    assert configs[0][1].base_url == f"serve:{tmp_path.resolve() / 'models' / 'vlm'}"


def test_shipped_pipeline_loads():
    from autofeedback import run

    _, _, configs = run.load_pipeline(REPO / "pipelines" / "shapes-ai-vs-human.yaml")
    names = [n for n, _ in configs]
    assert names.count("train_rwr") == 2 and names[-1] == "eval"
    rwr = [c for n, c in configs if n == "train_rwr"]
    assert {c.judge for c in rwr} == {"shapes", "openai:shapes-vlm"} and {c.out for c in rwr} == {"rwr-checker", "rwr-vlm"}
    assert all(c.base_url.startswith("serve:") for n, c in configs if n == "judge" and c.judge.startswith("openai"))

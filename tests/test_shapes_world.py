import json
import os

import numpy as np
import pytest

from autofeedback.shapes import checker
from autofeedback.shapes.suite import heldout_pairs, suite_records
from autofeedback.shapes.world import PALETTE, SHAPES, Scene, all_scenes, degrade, parse_prompt, render

from .conftest import REPO


def test_checker_reads_fresh_renders_per_concept():
    """>= 99% per concept on 2,000 freshly rendered, blurred, noisy, color-shifted images."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    n = 2000
    correct = {c: 0 for c in checker.CONCEPTS}
    for _ in range(n):
        scene = scenes[rng.integers(len(scenes))]
        image = degrade(render(scene, int(rng.integers(2**31))), rng)
        verdict = checker.check(image, scene)
        for concept, ok in verdict.correct.items():
            correct[concept] += ok
    accuracy = {c: v / n for c, v in correct.items()}
    assert all(a >= 0.99 for a in accuracy.values()), (seed, accuracy)


@pytest.mark.parametrize("wrong", [
    dict(count=3), dict(color="blue"), dict(shape="square"), dict(background="yellow"),
])
def test_checker_names_the_wrong_concept(wrong):
    truth = Scene(2, "red", "circle", "white")
    asked = Scene(**{**truth.metadata(), **wrong})
    verdict = checker.check(render(truth, seed=5), asked)
    (concept, _), = wrong.items()
    assert verdict.correct[concept] is False
    assert all(ok for c, ok in verdict.correct.items() if c != concept)
    assert not verdict.aligned and verdict.score == 0.75


def test_checker_on_blank_and_garbage_images():
    blank = np.full((32, 32, 3), PALETTE["blue"], np.uint8)
    v = checker.check(blank, Scene(1, "red", "square", "blue"))
    assert v.reading.count == 0 and v.correct == {"count": False, "color": False, "shape": False, "background": True}
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert not checker.read(noise).readable
    with pytest.raises(ValueError, match="HxWx3"):
        checker.read(np.zeros((32, 32)))


def test_render_is_deterministic_and_keeps_ground_truth():
    scene = Scene(4, "yellow", "triangle", "purple")
    a, b = np.asarray(render(scene, 7)), np.asarray(render(scene, 7))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(render(scene, 8)))
    assert checker.read(a).count == 4


def test_prompt_round_trip_and_validation():
    for scene in all_scenes():
        assert parse_prompt(scene.prompt) == scene
    assert Scene(1, "red", "circle", "blue").prompt == "one red circle on a blue background"
    with pytest.raises(ValueError, match="color and background must differ"):
        Scene(2, "red", "circle", "red")
    with pytest.raises(ValueError, match="count must be one of"):
        Scene(7, "red", "circle", "blue")
    with pytest.raises(ValueError, match="not a shapes-world prompt"):
        parse_prompt("a photo of a cat")


def test_suite_split_holds_unseen_count_color_pairs():
    records = suite_records()
    assert len(records) == 4 * len(PALETTE) * len(SHAPES) * (len(PALETTE) - 1)
    train = {(r["metadata"]["color"], r["metadata"]["count"]) for r in records if r["split"] == "train"}
    held = {(r["metadata"]["color"], r["metadata"]["count"]) for r in records if r["split"] == "heldout"}
    assert held == heldout_pairs() and not (train & held)
    # every color and every count is still seen in training
    assert {c for c, _ in train} == set(PALETTE) and {n for _, n in train} == {1, 2, 3, 4}


def test_committed_suite_file_matches_the_generator():
    lines = (REPO / "prompts" / "shapes.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == suite_records()


def test_recipe_caption_noise_mislabels_one_field_and_never_names_a_heldout_prompt():
    from autofeedback.shapes.recipe import mislabel, render_dataset
    from autofeedback.shapes.suite import split_of

    rng = np.random.default_rng(0)
    train = [Scene(**r["metadata"]) for r in suite_records() if r["split"] == "train"]
    for scene in train:
        for _ in range(5):
            wrong = mislabel(scene, ("count", "color"), rng)
            diff = [f for f in ("count", "color", "shape", "background") if getattr(wrong, f) != getattr(scene, f)]
            assert len(diff) == 1 and diff[0] in ("count", "color"), (scene, wrong)
            assert split_of(wrong) == "train"
    # The images are the same with and without noise; only the stated share of captions changes.
    clean_images, clean, n0 = render_dataset(1, seed=3)
    noisy_images, noisy, n = render_dataset(1, seed=3, caption_noise=0.4, noisy_fields=("count",))
    assert n0 == 0 and np.array_equal(clean_images, noisy_images)
    changed = [a != b for a, b in zip(clean, noisy)]
    assert sum(changed) == n and 0.3 < n / len(clean) < 0.5
    heldout_prompts = {r["prompt"] for r in suite_records() if r["split"] == "heldout"}
    assert not heldout_prompts & set(noisy)
    for a, b in zip(clean, noisy):
        if a != b:  # only the count differs
            sa, sb = parse_prompt(a), parse_prompt(b)
            assert sa.count != sb.count and (sa.color, sa.shape, sa.background) == (sb.color, sb.shape, sb.background)
    # --pretrain-split all: every scene is rendered, and a noisy count may name a held-out pair too
    all_images, all_captions, n_all = render_dataset(1, seed=3, caption_noise=0.4, splits=("train", "heldout"))
    assert len(all_images) == len(suite_records()) and 0.3 < n_all / len(all_images) < 0.5
    assert heldout_prompts & set(all_captions)


def test_pretraining_set_with_caption_noise_is_a_valid_run_with_train_prompts_only(tmp_path):
    from autofeedback import tables
    from autofeedback.shapes.demo import make_pretraining_set

    clean = tables.read(make_pretraining_set(tmp_path / "clean", per_prompt=2) / "images.parquet", "images").to_pylist()
    run = make_pretraining_set(tmp_path / "noisy", per_prompt=2, caption_noise=0.5, noisy_fields=("color",))
    noisy = tables.read(run / "images.parquet", "images").to_pylist()
    prompts = {r["prompt_id"]: r for r in tables.read(run / "prompts.parquet", "prompts").to_pylist()}
    assert [r["image"]["bytes"] for r in noisy] == [r["image"]["bytes"] for r in clean]  # same renders
    assert all(prompts[r["prompt_id"]]["prompt"] == r["prompt"] and prompts[r["prompt_id"]]["split"] == "train"
               for r in noisy)
    wrong = [(a, b) for a, b in zip(clean, noisy) if a["prompt"] != b["prompt"]]
    assert 0.35 < len(wrong) / len(noisy) < 0.65
    assert all(parse_prompt(a["prompt"]).color != parse_prompt(b["prompt"]).color for a, b in wrong)
    # a relabelled render is a different row: its ID differs from the clean one's (the same ID otherwise)
    assert all((a["image_id"] == b["image_id"]) == (a["prompt"] == b["prompt"]) for a, b in zip(clean, noisy))


def test_pretraining_set_of_all_prompts_matches_a_base_pretrained_on_all(tmp_path):
    """split="all" renders every prompt (shapes-countnoise-all's pre-training data); wrong captions may then
    name any prompt, held-out ones included, as in the recipe's --pretrain-split all."""
    from autofeedback import tables
    from autofeedback.shapes.demo import make_pretraining_set
    from autofeedback.shapes.suite import suite_records

    run = make_pretraining_set(tmp_path / "all", per_prompt=2, split="all", caption_noise=0.4)
    rows = tables.read(run / "images.parquet", "images").to_pylist()
    assert len(rows) == 2 * len(suite_records())
    splits = {r["prompt_id"]: r["split"] for r in tables.read(run / "prompts.parquet", "prompts").to_pylist()}
    seen = {splits[r["prompt_id"]] for r in rows}
    assert seen == {"train", "heldout"}
    assert set(splits) == {r["prompt_id"] for r in rows}  # every caption's prompt is in the prompts table


def test_recipe_unet_width_sets_the_unets_channels(tmp_path):
    from autofeedback.shapes import recipe

    tokenizer = recipe.write_tokenizer(tmp_path / "tokenizer")
    _, _, default = recipe.build_models(tokenizer)
    _, _, wide = recipe.build_models(tokenizer, unet_width=64)
    assert tuple(default.config.block_out_channels) == (48, 96)
    assert tuple(wide.config.block_out_channels) == (64, 128)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 1.5 < n(wide) / n(default) < 2.0  # ~(64/48)^2
    with pytest.raises(SystemExit):  # the group norms need a multiple of 16: a clear error, not a diffusers trace
        recipe.main(["--out", str(tmp_path / "m"), "--unet-width", "40"])

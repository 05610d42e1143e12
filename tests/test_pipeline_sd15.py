"""pipelines/sd15-vllm.yaml, the GPU recipe, run offline: the same YAML with `--set` overrides pointing at tiny
stand-ins (the shipped shapes-tiny pipeline for SD-1.5, the checker's OpenAI-protocol server for vLLM)."""

import json

from autofeedback import run, tables
from autofeedback.config import EvalConfig, GenerateConfig, JudgeConfig, TrainDPOConfig

from .conftest import REPO, SHIPPED_MODEL

YAML = REPO / "pipelines" / "sd15-vllm.yaml"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _overrides(base_url: str) -> list[str]:
    return [f"generate.model={SHIPPED_MODEL}", "generate.device=cpu", "generate.dtype=float32",
            "generate.height=null", "generate.width=null", "generate.steps=4", "generate.limit=8",
            "generate.batch_size=32", f"judge.base_url={base_url}", f"train_dpo.model={SHIPPED_MODEL}",
            "train_dpo.device=cpu", "train_dpo.mixed_precision='no'", "train_dpo.steps=2", "train_dpo.batch_size=2",
            "train_dpo.grad_accum=1", "eval.bootstrap=200"]


def test_the_yaml_is_the_gpu_recipe(tmp_path):
    _, _, configs = run.load_pipeline(YAML, run_dir=tmp_path / "run")
    names = [n for n, _ in configs]
    assert names == ["generate", "judge", "pairs", "train_dpo", "generate", "generate", "judge", "eval"]
    gens = [c for n, c in configs if n == "generate"]
    assert all(isinstance(g, GenerateConfig) and g.model == SD15 and g.device == "cuda" and g.dtype == "float16"
               and g.height == g.width == 512 for g in gens)
    assert gens[2].lora == str(tmp_path / "run" / "dpo" / "lora") and gens[0].lora is None
    judges = [c for n, c in configs if n == "judge"]
    assert all(isinstance(j, JudgeConfig) and j.judge == "openai:Qwen/Qwen2.5-VL-7B-Instruct"
               and j.base_url == "http://localhost:8000/v1" for j in judges)
    dpo = configs[3][1]
    assert isinstance(dpo, TrainDPOConfig) and dpo.model == SD15 and dpo.lora_rank > 0
    assert isinstance(configs[-1][1], EvalConfig)


def test_the_gpu_recipe_runs_offline_on_tiny_stand_ins(tmp_path, server):
    run_dir = tmp_path / "run"
    lines: list[str] = []
    metrics = run.run(YAML, _overrides(server.base_url), run_dir, echo=lines.append)
    out = "\n".join(lines)
    assert (run_dir / "dpo" / "lora" / "pytorch_lora_weights.safetensors").exists()
    images = tables.read(run_dir / "images.parquet", "images", columns=["model"]).column("model").to_pylist()
    assert len(images) == 3 * 8 * 4 and any("+lora:" in m for m in images)
    judged = tables.read(run_dir / "judgments.parquet", "judgments", columns=["judge", "status"]).to_pylist()
    assert {r["judge"] for r in judged} == {"openai:Qwen/Qwen2.5-VL-7B-Instruct"}
    assert len(judged) == 3 * 8 * 4 and all(r["status"] == "ok" for r in judged)
    assert metrics["alignment"]["groups"] and "before/after" in out
    ba = json.loads((run_dir / "report" / "metrics.json").read_text())["before_after"]
    assert len(ba["models"]) == 2

"""Issue #18's defects in the diffusion trainers, each pinned by a test that failed before its fix."""

import json

import numpy as np
import pytest
import torch

from autofeedback import tables, train_dpo, training
from autofeedback.config import TrainDPOConfig
from autofeedback.shapes.demo import make_rendered_run

from .test_train_dpo import _prefs


@pytest.fixture
def pref_run(tmp_path):
    return _prefs(make_rendered_run(tmp_path / "run", n_prompts=3, per_prompt=2))


def _cfg(run_dir, model, **kw):
    base = dict(run_dir=run_dir, model=str(model), steps=2, batch_size=2, device="cpu", lr=1e-2,
                checkpoint_every=0, log_every=1)
    return TrainDPOConfig(**{**base, **kw})


def test_training_latents_are_the_posterior_mode_as_in_pretraining(pref_run, tiny_model):
    # (a) the shapes model was pre-trained on the VAE posterior's mode; fine-tuning on a posterior sample
    # trained it on latents with extra noise of 0.3x the latent std
    s = training.setup(_cfg(pref_run, tiny_model), need_reference=False)
    png = tables.read(pref_run / "images.parquet", "images", columns=["image"]).column("image")[0].as_py()["bytes"]
    z1, z2 = s.encode([png]), s.encode([png])
    vae = s.pipe.vae
    x = training.to_tensor(png, (vae.config.sample_size, vae.config.sample_size))[None]
    with torch.no_grad():
        mode = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    assert torch.equal(z1, z2)  # deterministic
    assert torch.allclose(z1, mode, atol=1e-6)
    s_sample = training.setup(_cfg(pref_run, tiny_model, vae_latents="sample"), need_reference=False)
    assert not torch.allclose(s_sample.encode([png]), mode, atol=1e-3)  # the option still gives diffusers' way


def test_lora_with_alpha_other_than_rank_reloads_at_its_trained_scale(pref_run, tiny_model):
    # (c) the saved LoRA carried no alpha, so load_lora_weights assumed alpha = rank: an adapter trained with
    # rank 4, alpha 16 reloaded at a quarter of its effect
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    s = train_dpo.run(_cfg(pref_run, tiny_model, lora_rank=4, lora_alpha=16))
    # the config is in the file, in a fixed order: its bytes are the adapter's identity (image IDs), so a set's
    # run-dependent order must not reach them (a resumed run re-saving it made every tuned image new work)
    from safetensors import safe_open

    with safe_open(f"{s['lora']}/pytorch_lora_weights.safetensors", "pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 16 and meta["unet.r"] == 4
    assert meta["unet.target_modules"] == sorted(meta["unet.target_modules"])
    torch.manual_seed(0)
    z, t, emb = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 32, 64)

    loaded = StableDiffusionPipeline.from_pretrained(tiny_model)
    loaded.load_lora_weights(s["lora"])
    # the adapter as trained: the same weights in a LoRA layer with alpha 16
    expected = StableDiffusionPipeline.from_pretrained(tiny_model).unet
    expected.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    weights = {k.replace("unet.", "", 1).replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v
               for k, v in load_file(f"{s['lora']}/pytorch_lora_weights.safetensors").items()}
    result = set_peft_model_state_dict(expected, weights)
    assert not result.unexpected_keys
    base = StableDiffusionPipeline.from_pretrained(tiny_model).unet
    with torch.no_grad():
        out_loaded = loaded.unet(z, t, encoder_hidden_states=emb).sample
        out_expected = expected(z, t, encoder_hidden_states=emb).sample
        out_base = base(z, t, encoder_hidden_states=emb).sample
    assert not torch.allclose(out_expected, out_base, atol=1e-5)  # the adapter does something
    np.testing.assert_allclose(out_loaded.numpy(), out_expected.numpy(), atol=1e-5)


def test_each_micro_batch_of_an_accumulated_step_draws_its_own_batch():
    """--grad-accum N: the N micro-batches of one optimizer step get different batches, noise and timesteps
    (they used to share one generator seeded by the step); with N=1 the stream is what it always was."""
    import numpy as np

    from autofeedback.training import batch_rng

    draws = [batch_rng(0, 7, 0, micro).integers(2**31, size=4).tolist() for micro in range(3)]
    assert len({tuple(d) for d in draws}) == 3
    assert draws[0] == np.random.default_rng([0, 7, 0]).integers(2**31, size=4).tolist()
    assert batch_rng(0, 7, 0, 1).integers(2**31, size=4).tolist() == draws[1]  # resumable: a pure function


def test_model_identity_ignores_the_safetensors_header_key_order(tmp_path):
    """The same weights and metadata saved by two processes differ in header key order (safetensors keeps
    __metadata__ in a hash map): a resumed `train dpo` re-saving its LoRA made `generate` redo every image."""
    import json
    import struct

    from autofeedback.generate import model_fingerprint

    data = bytes(range(16))
    tensors = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}

    def write(path, metadata_items):
        header = json.dumps({"__metadata__": dict(metadata_items), **tensors}).encode()
        path.mkdir()
        (path / "pytorch_lora_weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)
        return path

    a = write(tmp_path / "a", [("format", "pt"), ("lora_adapter_metadata", "{}")])
    b = write(tmp_path / "b", [("lora_adapter_metadata", "{}"), ("format", "pt")])
    c = write(tmp_path / "c", [("format", "pt"), ("lora_adapter_metadata", '{"r": 8}')])
    name = "pytorch_lora_weights.safetensors"
    assert (a / name).read_bytes() != (b / name).read_bytes()
    assert model_fingerprint(str(a)) == model_fingerprint(str(b)) != model_fingerprint(str(c))
    (tmp_path / "d.safetensors").write_bytes(b"not a safetensors file")  # hashed as bytes, no error
    assert model_fingerprint(str(tmp_path / "d.safetensors"))


def test_random_flip_mirrors_the_image_and_leaves_unflagged_runs_unchanged(pref_run, tiny_model):
    # --random-flip (diffusers' --random_flip): a flagged image is encoded as its mirror image; the draw comes
    # after the batch's own, so a run without the flag draws the same batches, noise and timesteps as before
    from PIL import Image

    from autofeedback.images import decode_image

    s = training.setup(_cfg(pref_run, tiny_model), need_reference=False)
    png = tables.read(pref_run / "images.parquet", "images", columns=["image"]).column("image")[0].as_py()["bytes"]
    import io

    buf = io.BytesIO()
    decode_image(png).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, format="PNG")
    mirrored = s.encode([buf.getvalue()])
    both = s.encode([png, png], np.array([False, True]))
    assert torch.allclose(both[1:], mirrored, atol=1e-5)
    assert torch.allclose(both[:1], s.encode([png]), atol=1e-6)
    assert not torch.allclose(both[0], both[1], atol=1e-3)  # the image is not symmetric
    rng = np.random.default_rng(0)
    assert training.flips(_cfg(pref_run, tiny_model), rng, 8) is None
    assert rng.random() == np.random.default_rng(0).random()  # nothing drawn without the flag
    f = training.flips(_cfg(pref_run, tiny_model, random_flip=True), np.random.default_rng(0), 1000)
    assert f.dtype == bool and 0.45 < f.mean() < 0.55
    # both trainers run with it (DPO mirrors a pair's two images together)
    assert train_dpo.run(_cfg(pref_run, tiny_model, random_flip=True, out="flipped"))["steps"] == 2

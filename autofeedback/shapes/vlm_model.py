"""The tiny shapes VLM: a standard transformers LLaVA (LlavaForConditionalGeneration + LlavaProcessor).

- vision tower: the shipped shapes-CLIP's vision model (CLIPVisionModel, 32x32 px, 4x4 patches); LLaVA's "full"
  feature strategy keeps CLIP's class token next to the 64 patch tokens (65 image tokens): the class token is what
  shapes-CLIP was trained to fill with count and shape (with "default", patches only, a first model learned colors
  and backgrounds but counted and named shapes at chance)
- projector: LLaVA's 2-layer MLP
- language model: a small Llama (LlamaForCausalLM config), byte-level BPE tokenizer trained with `tokenizers` on
  the judge's own request texts and answers, so any text round-trips and the judge's words are single tokens
- a chat template (Jinja, on the tokenizer and the processor): <|system|>...<|end|> <|user|>...<image>...<|end|>
  <|assistant|>...<|end|>; `apply_chat_template` works with content lists of {"type": "text"} / {"type": "image"}

This module holds what the recipe (shapes/vlm_recipe.py) and the server (judges/vlm_server.py) share: the
chat template, OpenAI messages -> chat messages + images, and the model/processor builders.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

SPECIAL = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<image>"]
IMAGE_TOKEN = "<image>"
END = "<|end|>"
PAD = "<|pad|>"
PATCH = 4
IMAGE_SIZE = 32

CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "<|{{ m['role'] }}|>\n"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'image' -%}<image>{%- elif p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)


class BadRequest(ValueError):
    """A chat request the model can't take: the server answers 400 with this message."""


def decode_data_url(url: str):
    """A base64 data URL -> RGB PIL image; BadRequest naming what is wrong."""
    from PIL import Image, UnidentifiedImageError

    m = re.match(r"data:(image/[\w+.-]+);base64,(.*)", url or "", re.S)
    if not m:
        raise BadRequest("image_url must be a base64 data URL (data:image/png;base64,...); "
                         f"got {str(url)[:40]!r}")
    try:
        data = base64.b64decode(m.group(2), validate=True)
        img = Image.open(io.BytesIO(data))
        img.load()
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"image data URL is not valid base64 ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadRequest(f"image data URL does not decode as an image ({type(exc).__name__}: {exc})") from None
    return img.convert("RGB")


def chat_messages(messages: list) -> tuple[list[dict], list]:
    """OpenAI chat messages (text parts, image_url parts with data URLs) -> (messages for the chat template, images
    in order). Raises BadRequest for anything malformed."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    out, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}] needs a role of system, user or assistant")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                images.append(decode_data_url((part.get("image_url") or {}).get("url", "")))
                parts.append({"type": "image"})
            else:
                raise BadRequest(f"messages[{i}].content[{j}]: unsupported part type {kind!r} (text, image_url)")
        out.append({"role": msg["role"], "content": parts})
    return out, images


def judge_messages(system: str | None, text: str, n_images: int) -> list[dict]:
    """The chat messages of a judge request as the OpenAI judge sends them (judges/vlm.py _messages): an optional
    system message, then one user message = the template's text followed by the images."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": [{"type": "text", "text": text}] + [{"type": "image"}] * n_images}]


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """Byte-level BPE (the GPT-2 / Llama-3 / Qwen kind) trained on `texts`, wrapped as a fast tokenizer with the chat
    template; pad on the left (batched generation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token=PAD, padding_side="left",
                                   extra_special_tokens={"image_token": IMAGE_TOKEN}, model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True)


def build_processor(tokenizer):
    from transformers import LlavaProcessor

    # 64 patches + CLIP's class token (num_additional_image_tokens=1), kept by the "full" strategy: 65 tokens
    return LlavaProcessor(image_processor=image_processor(), tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="full", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def build_model(tokenizer, clip: str | None = None, hidden: int = 192, layers: int = 3, heads: int = 4,
                intermediate: int | None = None, vision_config=None):
    """LlavaForConditionalGeneration from configs; the vision tower's weights from shapes-CLIP when `clip` is given."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    end_id = tokenizer.convert_tokens_to_ids(END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden + 128,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=None,
                       eos_token_id=end_id, pad_token_id=pad_id)
    if vision_config is None:
        vision_config = (CLIPVisionConfig.from_pretrained(clip) if clip else
                         CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2))
    config = LlavaConfig(vision_config=vision_config, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=(IMAGE_SIZE // PATCH) ** 2 + 1, vision_feature_select_strategy="full",
                         vision_feature_layer=-1, projector_hidden_act="gelu", tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config)
    if clip:
        tower = CLIPVisionModel.from_pretrained(clip)
        missing, unexpected = model.model.vision_tower.load_state_dict(tower.state_dict(), strict=False)
        if [k for k in missing if "position_ids" not in k] or unexpected:
            raise RuntimeError(f"shapes-CLIP vision weights do not fit: missing {missing}, unexpected {unexpected}")
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = None
    return model

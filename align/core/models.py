"""Build or load a LLaVA-type policy and its processor; add LoRA; save and load through `from_pretrained`.

model, processor = build_model(ModelConfig())                       # tiny ToyWorld LLaVA, in-process
model, processor = build_model(ModelConfig(name_or_path="llava-hf/llava-1.5-7b-hf"))
model, processor = load_policy("runs/demo/sft_base/final")         # full checkpoint or LoRA adapter dir
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from align.config.sections import ModelConfig, TinyModelSpec
from align.core.switch import read_switch_config, restore_switch, set_switch
from data_builders import toyworld
from data_builders.hub import check_pretrained, hub_errors

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
# LLaVA-1.5's conversation format, so prompts look the same for the tiny model and llava-hf checkpoints.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for p in m['content'] -%}{%- if p['type'] == 'image' -%}{{ '<image>\n' }}{%- elif p['type'] == 'text' -%}"
    "{{ p['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{{ ' ' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}{{ m['content'][0]['text'] }}{%- endif -%}"
    "{{ '</s>' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
LANGUAGE_LORA = r"language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION_LORA = r"vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
PROJECTOR_LORA = r"multi_modal_projector\.(linear_1|linear_2)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, lower-casing tokenizer over the ToyWorld vocabulary; `<image>` is a special token so a run of
    image tokens is never read as one unknown word."""
    words = SPECIAL_TOKENS + [w for w in toyworld.vocabulary() + ["user", "assistant", ":"] if w not in SPECIAL_TOKENS]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words, glues "." and "," back on
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_tiny_processor(spec: TinyModelSpec) -> LlavaProcessor:
    side = spec.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    # CLIP has a CLS token that the "default" strategy drops: +1 here, -1 there gives (side/patch)^2 tokens.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_llava(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_mlp,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_mlp,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        vision_feature_layer=-1,  # with a 2-layer tower, -2 would read the first layer's output
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _check_source(name: str) -> None:
    """A local-looking path that does not exist is an error here, not a confusing hub lookup later."""
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + "runs" in name
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"model path {name!r} does not exist; give a checkpoint directory or a hub id")


def attn_implementation(cfg: ModelConfig) -> str | dict[str, str]:
    """cfg's attention backend in transformers' form; registers the Triton backend first if it is asked for."""
    impl = cfg.hf_attn_implementation()
    if "triton_fused" in (impl.values() if isinstance(impl, dict) else [impl]):
        import kernels.hf_attention  # noqa: F401  (registers `triton_fused` on import)
    return impl


def _load_pretrained(cfg: ModelConfig):
    name = cfg.name_or_path
    _check_source(name)
    path = Path(name).expanduser()
    adapter = path / "adapter_config.json"
    switch = read_switch_config(path)
    kwargs = dict(
        dtype=DTYPES[cfg.dtype], attn_implementation=attn_implementation(cfg), trust_remote_code=cfg.trust_remote_code
    )
    if adapter.is_file() or switch is not None:
        # a LoRA and/or HallE switch directory: its base, then the adapter on top (trainable), then the switch
        base = (
            json.loads(adapter.read_text())["base_model_name_or_path"] if adapter.is_file() else switch["base_model"]
        )
        _check_source(base)
        check_pretrained(base, "base model")  # seconds, not a minute of hub retries, when it cannot be had
        with hub_errors(base, "base model"):
            model = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
        proc_dir = str(path) if (path / "processor_config.json").is_file() else base
        processor = _load_processor(proc_dir, cfg)
        if len(processor.tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(processor.tokenizer))  # tokens added in training (control tokens)
        if adapter.is_file():
            model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
        if switch is not None:
            restore_switch(model, path)
        return model, processor
    source = str(path) if path.exists() else name
    check_pretrained(source, "model")
    with hub_errors(name, "model"):
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    return model, _load_processor(source, cfg)


def _load_processor(proc_dir: str, cfg: ModelConfig):
    with hub_errors(proc_dir, "processor"):
        return AutoProcessor.from_pretrained(proc_dir, trust_remote_code=cfg.trust_remote_code)


def lora_config(cfg: ModelConfig) -> LoraConfig:
    parts = [LANGUAGE_LORA] + [VISION_LORA] * cfg.lora_vision + [PROJECTOR_LORA] * cfg.lora_projector
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=".*(?:" + "|".join(parts) + ")",
    )


def build_model(cfg: ModelConfig, seed: int = 0):
    """Return `(model, processor)` ready to train: LoRA-wrapped, or every parameter trainable for `full`."""
    if cfg.name_or_path is None:
        torch.manual_seed(seed)
        processor = build_tiny_processor(cfg.tiny)
        model = build_tiny_llava(cfg.tiny, processor.tokenizer).to(DTYPES[cfg.dtype])
        model.set_attn_implementation(attn_implementation(cfg))
    else:
        model, processor = _load_pretrained(cfg)
    if cfg.finetune == "lora" and not isinstance(model, PeftModel):
        model = get_peft_model(model, lora_config(cfg))
    elif cfg.finetune == "full":
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
        model.requires_grad_(True)
    return model, processor


def load_policy(
    path: str | Path,
    device: str | None = None,
    trust_remote_code: bool = False,
    switch: float | None = None,
    dtype: str = "float32",
):
    """Load a saved policy (full model dir, LoRA adapter dir or HallE switch dir) for inference, in eval mode.
    `switch`: the HallE switch value ε the model then runs at (align/core/switch.py; None leaves it at 0)."""
    cfg = ModelConfig(name_or_path=str(path), finetune="full", trust_remote_code=trust_remote_code, dtype=dtype)
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    model, processor = _load_pretrained(cfg)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if switch is not None:
        set_switch(model, switch)
    model.eval()
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")), processor


def save_policy(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _unwrapped(model):
    return model.get_base_model() if isinstance(model, PeftModel) else model


def vision_tower(model) -> torch.nn.Module:
    """The vision tower of a LLaVA-type model, whether plain or wrapped by PEFT."""
    return _unwrapped(model).model.vision_tower


def multimodal_projector(model) -> torch.nn.Module:
    """The projector from vision features to LM embeddings, whether plain or wrapped by PEFT."""
    return _unwrapped(model).model.multi_modal_projector

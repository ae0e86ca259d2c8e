"""Tiny random-weight checkpoints of image-text-to-text model types, built offline for the tests.

Each is the model type's real transformers classes at a shrunk size (published-style config with
small widths and depths), its real processor class with a small byte-level BPE carrying the model's
special tokens, its PIL image processor (no torchvision; LFM2-VL's exists only for torchvision) and
a chat template in the style of the published one, saved with ``save_pretrained`` like a Hub checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    Gemma4ImageProcessorPil,
    Gemma4Processor,
    GenerationConfig,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen3VLProcessor,
)

from vlm_notebook.models.generic import image_only
from vlm_notebook.training.tokenizer import build_tokenizer

CORPUS = [
    "Describe this image.", "What colour is the shape?", "A red circle on a white background.",
    "Is it round? Answer yes or no.", "What shape is it?", "The picture shows a blue square.",
]

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|turn>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)
#: Gemma 4's named tokens: begin/end of image, the image soft token, their audio counterparts.
GEMMA_NAMED = {"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
               "boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>"}
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|video|>", *GEMMA_NAMED.values()]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
LFM2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: LFM2-VL's picture markers: around the picture, before the thumbnail, before each tile of a 2x2 grid.
LFM2_PICTURE = ["<|image_start|>", "<|image_end|>", "<|img_thumbnail|>",
                *(f"<|img_row_{row}_col_{col}|>" for row in (1, 2) for col in (1, 2))]
LFM2_SPECIALS = ["<|pad|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>", "<image>", *LFM2_PICTURE]

TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 1024}


def _tokenizer(specials: list[str], eos: str, pad: str, **named: str) -> PreTrainedTokenizerFast:
    backend = build_tokenizer(CORPUS, specials, vocab_size=320)
    extra = [token for token in specials if token not in {eos, pad, *named.values()}]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=pad, extra_special_tokens=extra, **named
    )


def _ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(token) for token in tokens]


def _qwen_image_processor() -> Qwen2VLImageProcessorPil:
    pixels = 64 * 64  # patch 16, merge 2: 4 x 4 patches, 4 image tokens
    return Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=16, temporal_patch_size=2, merge_size=2
    )


def _qwen_vision(out: int) -> dict[str, Any]:
    return {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": out,
            "num_position_embeddings": 16, "deepstack_visual_indexes": [1]}


def _qwen_processor(processor_class: type = Qwen3VLProcessor) -> Any:
    tokenizer = _tokenizer(QWEN_SPECIALS, "<|im_end|>", "<|endoftext|>")
    return image_only(processor_class)(
        image_processor=_qwen_image_processor(), tokenizer=tokenizer, video_processor=None,
        chat_template=QWEN_TEMPLATE,
    )


def _qwen_token_ids(processor: Any) -> dict[str, int]:
    image, video, start, end = _ids(
        processor.tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    return {"image_token_id": image, "video_token_id": video, "vision_start_token_id": start,
            "vision_end_token_id": end}


def qwen3_vl() -> tuple[Any, Any]:
    processor = _qwen_processor()
    vocab = len(processor.tokenizer)
    text = {**TEXT, "vocab_size": vocab, "head_dim": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e5, "mrope_section": [4, 2, 2],
                                "mrope_interleaved": True}}
    config = AutoConfig.for_model(
        "qwen3_vl", text_config=text, vision_config=_qwen_vision(32), tie_word_embeddings=False,
        **_qwen_token_ids(processor),
    )
    return processor, config


def qwen2_5_vl() -> tuple[Any, Any]:
    """Qwen2.5-VL (the ``qwen2vl`` family's second model type): window attention in the vision tower."""
    processor = _qwen_processor(Qwen2_5_VLProcessor)
    text = {**TEXT, "vocab_size": len(processor.tokenizer), "bos_token_id": None,
            "eos_token_id": processor.tokenizer.eos_token_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2]}}
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 32, "window_size": 64,
              "fullatt_block_indexes": [1]}
    config = AutoConfig.for_model(
        "qwen2_5_vl", text_config=text, vision_config=vision, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=processor.tokenizer.eos_token_id, **_qwen_token_ids(processor),
    )
    return processor, config


def qwen3_5() -> tuple[Any, Any]:
    processor = _qwen_processor()
    vocab = len(processor.tokenizer)
    text = {**TEXT, "vocab_size": vocab, "head_dim": 16, "num_hidden_layers": 4,
            "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            "linear_num_key_heads": 2, "linear_num_value_heads": 2, "linear_key_head_dim": 8,
            "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [2, 1, 1],
                                "mrope_interleaved": True, "partial_rotary_factor": 0.5}}
    config = AutoConfig.for_model(
        "qwen3_5", text_config=text, vision_config=_qwen_vision(32), tie_word_embeddings=False,
        **_qwen_token_ids(processor),
    )
    return processor, config


def gemma4() -> tuple[Any, Any]:
    backend = build_tokenizer(CORPUS, GEMMA_SPECIALS, vocab_size=320)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<turn|>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>",
        extra_special_tokens={**GEMMA_NAMED},
    )
    image_processor = Gemma4ImageProcessorPil(max_soft_tokens=70, patch_size=16, pooling_kernel_size=3)
    processor = image_only(Gemma4Processor)(
        feature_extractor=None, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        chat_template=GEMMA_TEMPLATE, image_seq_length=70,
    )
    ids = dict(zip(GEMMA_NAMED, _ids(tokenizer, *GEMMA_NAMED.values()), strict=True))
    vocab = len(tokenizer)
    text = {**TEXT, "vocab_size": vocab, "head_dim": 16, "global_head_dim": 16, "layer_types":
            ["sliding_attention", "full_attention"], "sliding_window": 64, "hidden_size_per_layer_input": 8,
            "vocab_size_per_layer_input": vocab, "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 16, "patch_size": 16, "pooling_kernel_size": 3,
              "position_embedding_size": 1024}
    config = AutoConfig.for_model(
        "gemma4", text_config=text, vision_config=vision, audio_config=None, tie_word_embeddings=False,
        boi_token_id=ids["boi_token"], eoi_token_id=ids["eoi_token"], image_token_id=ids["image_token"],
        video_token_id=_ids(tokenizer, "<|video|>")[0], boa_token_id=ids["boa_token"],
        eoa_token_index=ids["eoa_token"], audio_token_id=ids["audio_token"],
    )
    return processor, config


def llava() -> tuple[Any, Any]:
    tokenizer = _tokenizer(LLAVA_SPECIALS, "</s>", "<pad>", bos_token="<s>", unk_token="<unk>")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1,
    )
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 32}
    text = {"model_type": "llama", **TEXT, "vocab_size": len(tokenizer)}
    config = AutoConfig.for_model(
        "llava", vision_config=vision, text_config=text, image_token_index=_ids(tokenizer, "<image>")[0],
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    return processor, config


def lfm2_vl() -> tuple[Any, Any]:
    """LFM2-VL: a SigLIP2 tower with native aspect ratios, tiles and a thumbnail for large pictures, and
    LFM2's hybrid text model (short convolutions and attention). Its image processor needs torchvision."""
    from transformers import Lfm2VlImageProcessor, Lfm2VlProcessor

    tokenizer = _tokenizer(LFM2_SPECIALS, "<|im_end|>", "<|pad|>", bos_token="<|startoftext|>")
    # patch 8, pixels unshuffled 2x2: 4 to 16 image tokens; a picture larger than 2x that is cut in 32 px tiles
    image_processor = Lfm2VlImageProcessor(
        encoder_patch_size=8, downsample_factor=2, min_image_tokens=4, max_image_tokens=16, tile_size=32,
        min_tiles=2, max_tiles=4,
    )
    processor = Lfm2VlProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LFM2_TEMPLATE)
    vision = {"model_type": "siglip2_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "num_patches": 64,
              "vision_use_head": False}
    text = {"model_type": "lfm2", **TEXT, "vocab_size": len(tokenizer), "layer_types":
            ["conv", "full_attention"], "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = AutoConfig.for_model(
        "lfm2_vl", vision_config=vision, text_config=text, image_token_id=_ids(tokenizer, "<image>")[0],
        projector_hidden_size=32, downsample_factor=2, tie_word_embeddings=False,
    )
    return processor, config


FASTVLM_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n")


def fast_vlm() -> tuple[Any, Any]:
    """FastVLM: LLaVA's layout with a FastViT-HD tower (a timm model: needs timm, which needs torchvision),
    Qwen2 as the text model; one image token per 8x8 pixels of the tiny tower's 32 px input."""
    tokenizer = _tokenizer([*QWEN_SPECIALS, "<image>"], "<|im_end|>", "<|endoftext|>", image_token="<image>")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="full",
        chat_template=FASTVLM_TEMPLATE, num_additional_image_tokens=0,
    )
    stages = {"inference_mode": True, "layers": (2, 2), "embed_dims": (8, 16), "mlp_ratios": (4, 4),
              "se_downsamples": (False, False), "downsamples": (False, True), "pos_embs": (None, None),
              "token_mixers": ("repmixer", "repmixer"), "lkc_use_act": True, "stem_use_scale_branch": False}
    vision = {"model_type": "timm_wrapper", "architecture": "fastvit_mci3", "hidden_size": 32,
              "do_pooling": True, "global_pool": "avg", "model_args": stages}
    text = {"model_type": "qwen2", **TEXT, "vocab_size": len(tokenizer), "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(
        "fast_vlm", vision_config=vision, text_config=text, image_token_index=_ids(tokenizer, "<image>")[0],
        image_seq_length=16,
    )
    return processor, config


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "qwen3_vl": qwen3_vl, "qwen3_5": qwen3_5, "gemma4": gemma4, "llava": llava, "qwen2_5_vl": qwen2_5_vl,
    "lfm2_vl": lfm2_vl, "fast_vlm": fast_vlm,
}


def build(model_type: str, directory: Path, seed: int = 0) -> Path:
    """Save a tiny random ``model_type`` checkpoint (weights, config, processor) into ``directory``."""
    processor, config = BUILDERS[model_type]()
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    _speak_whole_characters(model, tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def set_config(directory: Path, **values: Any) -> None:
    """Change top-level values of the checkpoint's config.json."""
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _speak_whole_characters(model: Any, tokenizer: PreTrainedTokenizerFast) -> None:
    """Zero the output rows of the tokens that are part of a UTF-8 character (the byte tokens above
    127): their logit is 0 while the others' are random, so greedy answers are whole characters and
    texts compare exactly. The prompts are ASCII, so no input uses those rows (tied or not)."""
    partial = [index for index in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([index])]
    with torch.no_grad():
        model.get_output_embeddings().weight[partial] = 0.0

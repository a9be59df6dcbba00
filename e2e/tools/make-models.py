"""Generates the tiny models real vLLM serves in the local test bed.

No download: weights are random (seeded), the tokenizer is a byte-level BPE trained here on the
Python standard library's sources, which every machine with Python has. What it writes, under
the directory given as the only argument:

  decoder/  a Llama-style causal LM in bfloat16 (~1 M parameters), a chat template, and a
            generation config whose max_new_tokens bounds requests that set no max_tokens (a
            random model almost never samples EOS)
  encoder/  a BERT-style encoder for `vllm serve --runner pooling` (embeddings)
  lora/     a LoRA adapter (PEFT layout) for the decoder's q_proj and v_proj

Sizes are chosen for vLLM's CPU backend: its attention kernels refuse a head size of 16, so
heads are 64 wide; two layers keep start-up and per-token time small.

Run with the Python of the vLLM environment (it has torch, transformers, tokenizers and
safetensors): python make-models.py DIR
"""

import glob
import json
import os
import sys
import sysconfig

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

VOCAB = 2048
HIDDEN = 128
HEADS = 2  # head size 64
LAYERS = 2
# Positions the decoder accepts (RoPE: no weights per position), so a manifest's
# --max-model-len up to 128k runs unchanged; vLLM refuses a larger value than this.
MAX_POSITIONS = 131072
SEED = 20261207

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "[CLS]", "[SEP]", "[MASK]"]

# ChatML, the format most open chat models use; vLLM renders it with the request's messages.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus():
    """The standard library's sources, in a fixed order: the same text on every machine with
    the same Python, so the same tokenizer."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    if not files:
        sys.exit(f"no Python sources under {stdlib} to train a tokenizer on")
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()


def train_tokenizer():
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def fast(tokenizer, **special):
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=MAX_POSITIONS, **special)


def decoder(out, tokenizer):
    torch.manual_seed(SEED)
    ids = {name: tokenizer.token_to_id(name) for name in SPECIAL}
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.max_new_tokens = 16
    model.generation_config.do_sample = True
    model.save_pretrained(out, safe_serialization=True)
    tok = fast(tokenizer, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return config


def encoder(out, tokenizer):
    torch.manual_seed(SEED + 1)
    ids = {name: tokenizer.token_to_id(name) for name in SPECIAL}
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=512,
        pad_token_id=ids["<pad>"],
        torch_dtype="float32",
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
    tok = fast(tokenizer, cls_token="[CLS]", sep_token="[SEP]", pad_token="<pad>",
               unk_token="<unk>", mask_token="[MASK]")
    tok.model_max_length = 512
    tok.save_pretrained(out)
    # sentence-transformers metadata: vLLM reads the pooling (mean) and normalisation from it.
    with open(os.path.join(out, "modules.json"), "w") as f:
        json.dump([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ], f, indent=2)
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
    with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True}, f, indent=2)
    os.makedirs(os.path.join(out, "2_Normalize"), exist_ok=True)


def lora(out, config, base):
    """A rank-8 adapter on q_proj and v_proj, written in PEFT's layout (no peft needed)."""
    torch.manual_seed(SEED + 2)
    rank = 8
    os.makedirs(out, exist_ok=True)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            out_features = config.num_attention_heads * config.head_dim if module == "q_proj" \
                else config.num_key_value_heads * config.head_dim
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, config.hidden_size) * 0.02).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(out_features, rank) * 0.02).contiguous()
    save_file(tensors, os.path.join(out, "adapter_model.safetensors"))
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": rank,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "target_modules": ["q_proj", "v_proj"],
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": False,
            "inference_mode": True,
        }, f, indent=2)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make-models.py DIR")
    root = sys.argv[1]
    tokenizer = train_tokenizer()
    config = decoder(os.path.join(root, "decoder"), tokenizer)
    encoder(os.path.join(root, "encoder"), tokenizer)
    lora(os.path.join(root, "lora"), config, os.path.join(root, "decoder"))
    print(root)


if __name__ == "__main__":
    main()

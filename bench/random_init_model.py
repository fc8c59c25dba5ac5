"""Write a random-init model of a known shape, for speed measurements without downloading weights.

  python bench/random_init_model.py --shape qwen2.5-0.5b --tokenizer TOKENIZER_FOLDER --out FOLDER

The tokenizer folder can be any save_pretrained tokenizer (e.g. a minigrpo checkpoint's).
A random model never emits EOS, so every completion runs to max_new_tokens: step times
measured with it are the worst case for that length.
"""

import argparse

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {  # the published configurations of these models
    "smollm2-135m": (LlamaForCausalLM, LlamaConfig, dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True)),
    "qwen2.5-0.5b": (Qwen2ForCausalLM, Qwen2Config, dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True)),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--tokenizer", required=True, help="a save_pretrained tokenizer folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model_class, config_class, shape = SHAPES[args.shape]
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = model_class(config_class(**shape, **ids))
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{args.shape}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {args.out}")


if __name__ == "__main__":
    main()

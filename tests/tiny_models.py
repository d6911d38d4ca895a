"""Small random-weight checkpoints with a real trained tokenizer, built on the fly for tests.

The tokenizer is a byte-level BPE trained with `tokenizers` on this repository's own text, with
a chat template; the models are transformers' own classes saved with save_pretrained, so
transformers' generate on the same files is an independent reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def corpus() -> list[str]:
    texts = []
    for path in sorted((REPO / "container").rglob("*.py")):
        texts.append(path.read_text(encoding="utf-8"))
    texts.append("Grüße aus Köln! ünïcödé 你好世界 🙂 emoji and accents: café naïve résumé.\n" * 20)
    return texts


def build_tokenizer(directory: Path, vocab_size: int = 800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
        "eos_token": "<|end|>", "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE,
        "model_max_length": 4096}))
    return tokenizer


def build_model(directory: Path, architecture: str = "llama", seed: int = 0,
                max_positions: int = 512, **overrides) -> Path:
    """Save a tiny random model of the given family (llama | qwen2 | mistral | mistral-sliding |
    qwen3 | qwen3-moe | mixtral | falcon | gpt2 | opt) with tokenizer."""
    import torch
    import transformers

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    tokenizer = build_tokenizer(directory)
    eos = tokenizer.token_to_id("<|end|>")
    common = dict(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=max_positions, initializer_range=0.15,
                  eos_token_id=eos, bos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
    common.update(overrides)
    if architecture == "llama":
        config = transformers.LlamaConfig(
            rope_theta=500000.0, rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, **common)
        cls = transformers.LlamaForCausalLM
    elif architecture == "qwen2":
        config = transformers.Qwen2Config(rope_theta=10000.0, **common)
        cls = transformers.Qwen2ForCausalLM
    elif architecture == "mistral":
        config = transformers.MistralConfig(rope_theta=10000.0, sliding_window=None, **common)
        cls = transformers.MistralForCausalLM
    elif architecture == "mistral-sliding":     # a window shorter than the prompts
        config = transformers.MistralConfig(rope_theta=10000.0, sliding_window=8, **common)
        cls = transformers.MistralForCausalLM
    elif architecture == "qwen3":
        config = transformers.Qwen3Config(rope_theta=1000000.0, head_dim=32, **common)
        cls = transformers.Qwen3ForCausalLM
    elif architecture == "qwen3-moe":
        config = transformers.Qwen3MoeConfig(
            rope_theta=1000000.0, head_dim=16, num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=48, norm_topk_prob=True, decoder_sparse_step=1,
            mlp_only_layers=[], **common)
        cls = transformers.Qwen3MoeForCausalLM
    elif architecture == "qwen2-moe":     # a shared expert beside the routed ones
        config = transformers.Qwen2MoeConfig(
            rope_theta=1000000.0, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=80, norm_topk_prob=False, decoder_sparse_step=1,
            mlp_only_layers=[1], **common)
        cls = transformers.Qwen2MoeForCausalLM
    elif architecture == "mixtral":
        config = transformers.MixtralConfig(rope_theta=1000000.0, num_local_experts=4,
                                            num_experts_per_tok=2, sliding_window=None, **common)
        cls = transformers.MixtralForCausalLM
    elif architecture == "gemma2":
        config = transformers.Gemma2Config(
            head_dim=16, query_pre_attn_scalar=24, sliding_window=8, attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0, **{**common, "tie_word_embeddings": True})
        cls = transformers.Gemma2ForCausalLM
    elif architecture == "gemma3":
        config = transformers.Gemma3TextConfig(
            head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                             "full_attention": {"rope_type": "default",
                                                "rope_theta": 1000000.0}},
            **{**common, "tie_word_embeddings": True, "num_hidden_layers": 3})
        cls = transformers.Gemma3ForCausalLM
    elif architecture == "phi3":      # LongRoPE over 3/4 of each head (Phi-4-mini's shape)
        half = 16 * 3 // 4 // 2
        config = transformers.Phi3Config(
            partial_rotary_factor=0.75, original_max_position_embeddings=128,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                             "short_factor": [1.0 + 0.1 * i for i in range(half)],
                             "long_factor": [2.0 + 0.5 * i for i in range(half)]},
            **common)
        cls = transformers.Phi3ForCausalLM
    elif architecture == "falcon":     # not native: served through transformers
        config = transformers.FalconConfig(
            vocab_size=common["vocab_size"], hidden_size=common["hidden_size"],
            num_hidden_layers=common["num_hidden_layers"],
            num_attention_heads=common["num_attention_heads"], new_decoder_architecture=False,
            multi_query=True, parallel_attn=True, bias=False, alibi=False,
            initializer_range=common["initializer_range"], eos_token_id=eos, bos_token_id=None,
            pad_token_id=0)
        cls = transformers.FalconForCausalLM
    elif architecture == "gpt2":       # not native either
        config = transformers.GPT2Config(
            vocab_size=common["vocab_size"], n_embd=common["hidden_size"],
            n_layer=common["num_hidden_layers"], n_head=common["num_attention_heads"],
            n_positions=max_positions, initializer_range=common["initializer_range"],
            eos_token_id=eos, bos_token_id=eos, pad_token_id=0)
        cls = transformers.GPT2LMHeadModel
    elif architecture == "opt":      # the seeds' OPT-30B family: learned positions, no GQA
        config = transformers.OPTConfig(
            vocab_size=common["vocab_size"], hidden_size=common["hidden_size"],
            ffn_dim=common["intermediate_size"], num_hidden_layers=common["num_hidden_layers"],
            num_attention_heads=common["num_attention_heads"],
            max_position_embeddings=max_positions, word_embed_proj_dim=common["hidden_size"],
            init_std=common["initializer_range"], eos_token_id=eos, bos_token_id=None,
            pad_token_id=0)
        cls = transformers.OPTForCausalLM
    else:
        raise ValueError(architecture)
    torch.manual_seed(seed)
    model = cls(config).eval()
    if architecture in ("qwen3", "qwen3-moe", "qwen2-moe", "gemma2", "gemma3", "phi3"):
        # norms start at 1 (or Gemma's 0): random ones make each norm's weight count
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.normal_(0.0, 0.3)
    model.save_pretrained(directory)
    return directory


def default_model_dir() -> Path | None:
    """The embedded SmolLM2 checkpoint that `make` converts (None when it is not built)."""
    candidates = [os.environ.get("SERVE_DEFAULT_MODEL"),
                  str(Path.home() / ".cache/serve/models/SmolLM2-135M-Instruct")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "model.safetensors").is_file():
            return Path(candidate)
    return None


def reference_greedy(model_dir: Path, prompts: list[list[int]], max_new_tokens: int,
                     stop_at_eos: bool = False) -> list[list[int]]:
    """transformers' generate, greedy, fp32, one prompt at a time: the oracle."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if not stop_at_eos:
        model.generation_config.eos_token_id = None     # neither stop on nor suppress EOS
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            generated = model.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
            outputs.append(generated[0, len(prompt):].tolist())
    return outputs

"""PEFT adapters made for a checkpoint, and the oracle: transformers + peft, one adapter alone."""

from __future__ import annotations

from pathlib import Path

# (name, rank, alpha, rsLoRA, target modules): different ranks and targets on purpose
ADAPTERS = [
    ("alpha", 4, 8, False, ["q_proj", "v_proj"]),
    ("beta", 8, 16, True, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"]),
    ("gamma", 2, 4, False, ["o_proj", "down_proj", "up_proj"]),
]


def make_adapter(base_dir: Path, out_dir: Path, rank: int, alpha: float, rslora: bool,
                 targets: list[str], seed: int) -> Path:
    """A PEFT LoRA adapter with random A and B (B is zero after PEFT's default init, which would
    make every adapter the base model), large enough to change greedy tokens."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    if (out_dir / "adapter_config.json").is_file():
        return out_dir
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=targets,
                             init_lora_weights=False)
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3 if "lora_A" in name else 0.2)
    wrapped.save_pretrained(out_dir)
    return out_dir


def make_adapters(base_dir: Path, root: Path) -> dict[str, Path]:
    return {name: make_adapter(base_dir, root / name, rank, alpha, rslora, targets, seed)
            for seed, (name, rank, alpha, rslora, targets) in enumerate(ADAPTERS)}


def reference_greedy(base_dir: Path, adapter_dir: Path | None, prompts: list[list[int]],
                     max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens of transformers + peft with that adapter alone (None: the base model)."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    model.generation_config.eos_token_id = None
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=0)
            out.append(generated[0, len(prompt):].tolist())
    return out

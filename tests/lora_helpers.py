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


def _projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(out, in) of each LoRA target of a Llama-style decoder layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    hidden, inter = config.hidden_size, config.intermediate_size
    return {"q_proj": (q, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden),
            "o_proj": (hidden, q), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
            "down_proj": (hidden, inter)}


def write_random_peft_adapter(base_dir: Path, out_dir: Path, rank: int, alpha: float,
                              targets: list[str], seed: int, std: float = 0.05,
                              device: str = "cpu") -> Path:
    """A LoRA adapter in PEFT's files (adapter_config.json + adapter_model.safetensors) with
    random A and B, written without peft (which the GPU machine lacks). The layout is PEFT's:
    base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A,B}.weight."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_dir)
    shapes = _projection_shapes(config)
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module in targets:
            out_features, in_features = shapes[module]
            block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{block}.{module}"
            for part, shape in (("lora_A", (rank, in_features)), ("lora_B", (out_features, rank))):
                tensors[f"{key}.{part}.weight"] = (torch.randn(
                    shape, generator=generator, device=device) * std).to(torch.bfloat16).cpu()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "target_modules": targets, "bias": "none", "base_model_name_or_path": str(base_dir)}))
    return out_dir


def merge_adapter_into(model, adapter_dir: Path) -> None:
    """W += alpha/r * B @ A for every module of the adapter (in fp32, then the model's dtype):
    the reference a served adapter must match, as peft's merge computes it."""
    import json

    import torch
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, a in weights.items():
            if ".lora_A." not in key:
                continue
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            linear = modules[key.split(".lora_A.")[0].removeprefix("base_model.model.")]
            delta = scale * (b.float() @ a.float())
            linear.weight.copy_((linear.weight.float() + delta.to(linear.weight.device))
                                .to(linear.weight.dtype))

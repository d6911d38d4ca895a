"""engine=DeepSpeed on a GPU for an architecture DeepSpeed injects kernels for (one run).

    PYTHONUNBUFFERED=1 python3 bench/device/deepspeed_injection.py

A small random OPT (as in the seeds' OPT-30B deployment) in fp16, served by `serve` with
engine=DeepSpeed and tensor_parallel_degree=1; greedy tokens of a few prompts through HTTP
against transformers' generate on the same weights. The log lines that name the mode (kernel
injection or AutoTP) and any traceback are kept. Wheels: as deepspeed_w1_w2.py. Saves
$OUT/deepspeed_injection.json and prints it.

Run on an H200 (DeepSpeed 0.19.8, transformers 5.17): DeepSpeed built its inference kernels and
injected them, then the first forward failed (its layers return transformers 4's tuples):
bench/results/deepspeed_injection_h200.json. Since then transformers 5 gets AutoTP for these
types (engines/deepspeed_config.py); that path is not yet run here for OPT on a GPU (AutoTP ran
on the H200 for the 8B Llama: deepspeed_w1_w2.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deepspeed_w1_w2 as ds  # noqa: E402
from common import PORT, start_serve, word_tokenizer  # noqa: E402

CKPT = Path("/tmp/opt-small")
RESULT: dict = {"engine": "deepspeed", "architecture": "opt"}


def build() -> None:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=4096, hidden_size=1024, ffn_dim=4096, num_hidden_layers=4,
                       num_attention_heads=16, max_position_embeddings=2048,
                       word_embed_proj_dim=1024, eos_token_id=None, bos_token_id=None,
                       pad_token_id=1)
    torch.manual_seed(0)
    model = OPTForCausalLM(config).to(torch.float16)
    CKPT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(CKPT)
    word_tokenizer(CKPT, config.vocab_size)


def reference(prompts: list[list[int]], tokens: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(CKPT, dtype=torch.float16).cuda().eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            generated = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=tokens,
                                       min_new_tokens=tokens, do_sample=False, pad_token_id=1)
            out.append(generated[0, len(ids):].tolist())
    del model
    torch.cuda.empty_cache()
    return out


def main() -> None:
    import requests

    ds.ensure_packages()
    build()
    prompts = [[(7 * i + 13 * j) % 4000 + 2 for j in range(20 + 9 * i)] for i in range(4)]
    tokens = 16
    expected = reference(prompts, tokens)
    env = dict(OPTION_ENGINE="DeepSpeed", OPTION_TENSOR_PARALLEL_DEGREE="1", OPTION_DTYPE="fp16",
               OPTION_MAX_TOKENS="1024")
    log_path = Path("/tmp/serve_ds.log")
    server = None
    try:
        with log_path.open("w") as log_file:
            server = start_serve(CKPT, env, output=log_file)
        RESULT["start_s"] = server.first_token_s
        got = []
        for ids in prompts:
            text = " ".join(f"w{i}" for i in ids)
            body = requests.post(f"http://127.0.0.1:{PORT}/invocations", timeout=60, json={
                "inputs": text, "parameters": {"max_new_tokens": tokens, "do_sample": False,
                                               "details": True}}).json()
            got.append([t["id"] for t in body["details"]["tokens"]])
        RESULT["equal_sequences"] = f"{sum(a == b for a, b in zip(got, expected))}/{len(prompts)}"
        equal = sum(x == y for a, b in zip(got, expected) for x, y in zip(a, b))
        RESULT["equal_tokens"] = f"{equal}/{len(prompts) * tokens}"
        RESULT["ours"], RESULT["transformers"] = got, expected
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - report what happened
        RESULT["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if server is not None:
            server.stop(30)
        lines = log_path.read_text(errors="replace").splitlines()
        RESULT["log_injection"] = [line[-300:] for line in lines
                                   if "injection" in line.lower() or "AutoTP" in line][:6]
        RESULT["log_tail"] = [line[-300:] for line in lines[-15:]]
        RESULT["log_traceback"] = [line[-300:] for line in lines
                                   if line.lstrip().startswith("File ") or "Error" in line][:40]
        ds.OUT.mkdir(parents=True, exist_ok=True)
        (ds.OUT / "deepspeed_injection.json").write_text(json.dumps(RESULT, indent=1))
        print(json.dumps({k: v for k, v in RESULT.items() if k not in ("ours", "transformers")},
                         indent=1), flush=True)


if __name__ == "__main__":
    main()

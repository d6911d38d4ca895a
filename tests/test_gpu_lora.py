"""LoRA inside the decode CUDA graphs, through `serve` on a GPU: a random Llama-3-shaped bf16
model with three rank-16 adapters on all linear layers, requests of every adapter and of the
base model at once. The oracle is transformers with the adapter merged into the weights
(W + alpha/r * B @ A, as peft's merge does), teacher-forced over the tokens we served.
Needs an NVIDIA GPU; skipped cleanly where there is none."""

from __future__ import annotations

import threading

import pytest
import requests
import torch

from conftest import ServeProcess
from lora_helpers import merge_adapter_into, write_random_peft_adapter

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA GPU on this machine")]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHOICES = [None, "a0", "a1", "a2"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import build_tokenizer

    directory = tmp_path_factory.mktemp("gpu-lora") / "model"
    directory.mkdir()
    tokenizer = build_tokenizer(directory, vocab_size=2000)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=1024, intermediate_size=3584,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        max_position_embeddings=4096, initializer_range=0.05, eos_token_id=None,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    for seed, name in enumerate(CHOICES[1:]):
        write_random_peft_adapter(directory, directory / "adapters" / name, 16, 32, ALL_LINEAR,
                                  seed, std=0.05)
    # two device slots for three adapters: slots are refilled while the graphs replay
    (directory / "serving.properties").write_text(
        "option.enable_lora=true\noption.max_loras=2\noption.max_lora_rank=16\n"
        "option.max_rolling_batch_size=16\noption.max_model_len=1024\n")
    return directory


@pytest.fixture(scope="module")
def served(model_dir):
    """Prompt -> (adapter, served token ids, served log-probabilities), all sent at once."""
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 2000, (int(n),), generator=generator).tolist()
               for n in torch.randint(8, 200, (16,), generator=generator)]
    server = ServeProcess(model_dir).start(timeout=600)
    results, errors = {}, []

    def one(i):
        # the OpenAI route, so prompts go in as token ids; "model" names the adapter
        body = {"model": CHOICES[i % 4] or "model", "prompt": prompts[i], "temperature": 0,
                "max_tokens": NEW_TOKENS, "ignore_eos": True, "logprobs": 1,
                "return_tokens_as_token_ids": True}
        try:
            reply = requests.post(server.url("/v1/completions"), json=body, timeout=300)
            assert reply.status_code == 200, reply.text
            logprobs = reply.json()["choices"][0]["logprobs"]
            results[i] = [(int(name.removeprefix("token_id:")), value) for name, value in
                          zip(logprobs["tokens"], logprobs["token_logprobs"])]
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not errors, errors
        log = server.log
    finally:
        server.stop()
    return prompts, results, log


def _reference(model_dir, adapter):
    """float32 (the bf16 weights exactly, the adapter merged without rounding: the oracle) and
    bf16 (the same model rounded as the served one is: a measure of bf16's own noise)."""
    from transformers import AutoModelForCausalLM

    models = []
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda()
        if adapter:
            merge_adapter_into(model, model_dir / "adapters" / adapter)
        models.append(model.to(dtype).eval())
    return models


def _teacher_forced(models, prompt, tokens):
    """The oracle's log-softmax at each served position, and each position's bf16 noise
    allowance: 3 % of its largest |logit| (as tests/test_gpu.py allows the base model), or
    twice as far as transformers' own bf16 model strays from the oracle there, where that is
    more (a random model's near-ties move further than 3 % at some positions)."""
    ids = torch.tensor([prompt + tokens], device="cuda")
    with torch.no_grad():
        logits, rounded = (m(ids).logits[0, len(prompt) - 1:-1].float() for m in models)
    oracle = torch.log_softmax(logits, dim=-1)
    strays = (torch.log_softmax(rounded, dim=-1) - oracle).abs().max(dim=-1).values
    return oracle, torch.maximum(0.03 * logits.abs().max(dim=-1).values, 2 * strays)


def test_decode_graphs_were_captured_with_lora_on(served):
    _, _, log = served
    assert "captured" in log and "decode graphs" in log, log[-3000:]


def test_every_adapter_matches_the_merged_reference(model_dir, served):
    """Each served token is the reference's greedy choice up to a bf16 near-tie, and its served
    log-probability is the reference's within bf16 tolerance; the wrong adapter's reference
    (the negative control) does not fit."""
    prompts, results, _ = served
    fits, misfits = 0, 0
    for choice in CHOICES:
        models = _reference(model_dir, choice)
        wrong = CHOICES[(CHOICES.index(choice) + 1) % 4]
        for i in (i for i in range(len(prompts)) if CHOICES[i % 4] == choice):
            tokens = [t for t, _ in results[i]]
            served_lp = torch.tensor([lp for _, lp in results[i]])
            ref, noise = _teacher_forced(models, prompts[i], tokens)
            rows = torch.arange(len(tokens), device=ref.device)
            picked = ref[rows, torch.tensor(tokens, device=ref.device)]
            gaps = (ref.max(dim=-1).values - picked).cpu()
            noise, picked = noise.cpu(), picked.cpu()
            assert (gaps <= noise).all(), (choice, i, gaps.tolist(), noise.tolist())
            assert ((served_lp - picked).abs() <= noise).all(), (choice, i)
            fits += 1
        del models
        models = _reference(model_dir, wrong)
        for i in (i for i in range(len(prompts)) if CHOICES[i % 4] == choice):
            tokens = [t for t, _ in results[i]]
            ref, noise = _teacher_forced(models, prompts[i], tokens)
            rows = torch.arange(len(tokens), device=ref.device)
            picked = ref[rows, torch.tensor(tokens, device=ref.device)]
            if ((ref.max(dim=-1).values - picked) > noise).any():
                misfits += 1
        del models
        torch.cuda.empty_cache()
    assert fits == len(prompts)
    assert misfits == len(prompts), "the wrong adapter's reference fits too: adapters inert?"

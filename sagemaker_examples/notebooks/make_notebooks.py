"""Write the example notebooks (the .ipynb files beside this script) from the cells below.

    python sagemaker_examples/notebooks/make_notebooks.py

Edit the cells here, not in the .ipynb files, and run this again; tests/test_sagemaker_notebooks
executes every notebook top to bottom in LOCAL mode.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import json, os, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path.cwd().resolve().parent))     # helpers in sagemaker_examples/
from session import ExampleSession, default_model_dir, local_mode_default
from stream_text import lines, stream_text

# LOCAL (the default): moto stands in for S3 and SageMaker's control plane, and `serve` on
# this machine is the endpoint's container. For AWS: SERVE_EXAMPLES_LOCAL=0 and the three below.
LOCAL = local_mode_default()
IMAGE_URI = os.environ.get("SERVE_IMAGE_URI", "<account>.dkr.ecr.<region>.amazonaws.com/serve:gpu")
ROLE_ARN = os.environ.get("SAGEMAKER_ROLE_ARN", "")
BUCKET = os.environ.get("SERVE_MODEL_BUCKET", "")

session = ExampleSession.open(local=LOCAL, image=IMAGE_URI, role_arn=ROLE_ARN, bucket=BUCKET)
print("LOCAL" if LOCAL else "AWS", "mode; endpoints on", session.instance_type)'''

CLEANUP = '''\
# Delete the endpoints, configs, models and uploaded files (and stop the local services).
session.close()'''


NOTEBOOKS = {
    "01_llm_from_serving_properties.ipynb": [
        new_markdown_cell("""\
# An LLM from `serving.properties` alone

The model directory holds one file, `serving.properties`: the engine, where the weights are
(`option.model_id`: a Hugging Face id, an `s3://` prefix, or a path), and the batching knobs.
No `model.py`: the container's native engine (continuous batching, paged KV cache) serves it
with LMI's request schema and OpenAI's chat schema on `/invocations`."""),
        new_code_cell(SETUP),
        new_code_cell('''\
# On AWS the container downloads the checkpoint from the Hub; LOCAL reads the SmolLM2 checkpoint
# that `make default-model` converted on this machine.
model_id = str(default_model_dir()) if LOCAL else "HuggingFaceTB/SmolLM2-1.7B-Instruct"
model_dir = Path(tempfile.mkdtemp()) / "llm"
model_dir.mkdir()
(model_dir / "serving.properties").write_text(f"""\\
engine=Python
option.model_id={model_id}
option.max_rolling_batch_size=32
option.max_model_len=2048
""")
print((model_dir / "serving.properties").read_text())'''),
        new_code_cell('''\
endpoint = session.deploy("llm-properties", model_dir=model_dir)
runtime = session.runtime(endpoint)
print(endpoint, session.sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointStatus"])'''),
        new_markdown_cell("LMI / TGI schema: `inputs` + `parameters`; `details` adds token counts and the finish reason."),
        new_code_cell('''\
response = runtime.invoke_endpoint(
    EndpointName=endpoint, ContentType="application/json",
    Body=json.dumps({"inputs": "The capital of France is",
                     "parameters": {"max_new_tokens": 24, "details": True}}))
answer = json.loads(response["Body"].read())
print(answer["generated_text"])
print({k: answer["details"][k] for k in ("finish_reason", "prompt_tokens", "generated_tokens")})
if LOCAL:
    assert "Paris" in answer["generated_text"]'''),
        new_markdown_cell("OpenAI chat schema on the same route: a body with `messages`."),
        new_code_cell('''\
response = runtime.invoke_endpoint(
    EndpointName=endpoint, ContentType="application/json",
    Body=json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                     "max_tokens": 40, "temperature": 0}))
chat = json.loads(response["Body"].read())
print(chat["choices"][0]["message"]["content"])
print(chat["usage"])
if LOCAL:
    assert "Paris" in chat["choices"][0]["message"]["content"]'''),
        new_code_cell(CLEANUP),
    ],
    "02_custom_handler.ipynb": [
        new_markdown_cell("""\
# A custom `model.py` handler

Any DJL Serving handler runs unchanged: `handle(inputs: Input) -> Output`, an empty first call
carrying the options, dynamic batching (`batch_size`, `max_batch_delay`), and SageMaker's
custom attributes as request properties. This one scores texts with a causal LM: the
log-likelihood and perplexity of each text, something a text-generation container cannot do."""),
        new_code_cell(SETUP),
        new_code_cell('''\
MODEL_PY = \'\'\'\\
"""Scores texts with a causal LM: log-likelihood and perplexity of each text."""
import math

import torch
from djl_python import Input, Output
from transformers import AutoModelForCausalLM, AutoTokenizer

STATE = {}


def load(properties):
    model_id = properties.get("model_id") or properties["model_dir"]
    STATE["tokenizer"] = AutoTokenizer.from_pretrained(model_id)
    STATE["model"] = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32).eval()


def score(text):
    ids = STATE["tokenizer"](text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = STATE["model"](ids).logits[0, :-1]
    logprobs = torch.log_softmax(logits.float(), -1).gather(1, ids[0, 1:, None])[:, 0]
    total = float(logprobs.sum())
    return {"text": text, "tokens": int(ids.shape[1]), "log_likelihood": total,
            "perplexity": math.exp(-total / max(1, len(logprobs)))}


def handle(inputs: Input):
    if inputs.is_empty():                  # first call: options, model_dir, device_id ...
        load(inputs.get_properties())
        return None
    out = Output()
    batch = inputs.get_batches()
    for index, item in enumerate(batch):
        result = {"scores": [score(t) for t in item.get_as_json()["texts"]],
                  "batch_size": len(batch), "caller": item.get_property("caller")}
        if inputs.is_batch():
            out.add_as_json(result, batch_index=index)
        else:
            out.add_as_json(result)
    return out
\'\'\'
model_id = str(default_model_dir()) if LOCAL else "HuggingFaceTB/SmolLM2-360M-Instruct"
model_dir = Path(tempfile.mkdtemp()) / "scorer"
model_dir.mkdir()
(model_dir / "model.py").write_text(MODEL_PY)
(model_dir / "serving.properties").write_text(
    f"option.model_id={model_id}\\nbatch_size=4\\nmax_batch_delay=200\\n")
endpoint = session.deploy("scorer", model_dir=model_dir)
runtime = session.runtime(endpoint)'''),
        new_code_cell('''\
texts = ["The cat sat on the mat.", "Mat the on sat cat the."]
response = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json",
                                   Body=json.dumps({"texts": texts}), CustomAttributes="caller=notebook")
result = json.loads(response["Body"].read())
for s in result["scores"]:
    print(f"{s['perplexity']:10.1f}  {s['text']}")
print("custom attribute seen by the handler:", result["caller"])
assert result["caller"] == "notebook"
assert result["scores"][0]["perplexity"] < result["scores"][1]["perplexity"]'''),
        new_markdown_cell("Concurrent requests are batched by the server (up to `batch_size`, waiting at most `max_batch_delay` ms)."),
        new_code_cell('''\
from concurrent.futures import ThreadPoolExecutor

def call(i):
    body = json.dumps({"texts": [f"Request number {i} is a short sentence."]})
    return json.loads(runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json",
                                              Body=body)["Body"].read())

with ThreadPoolExecutor(4) as pool:
    results = list(pool.map(call, range(8)))
print("batch sizes the handler saw:", [r["batch_size"] for r in results])
assert all(len(r["scores"]) == 1 for r in results)'''),
        new_code_cell(CLEANUP),
    ],
    "03_streaming.ipynb": [
        new_markdown_cell("""\
# Streaming tokens with `invoke_endpoint_with_response_stream`

With `"stream": true` the container sends JSON lines as tokens are generated; SageMaker wraps
the bytes in an AWS event stream of `PayloadPart` events, which botocore parses. A part can cut
a line in two, so the client buffers bytes and splits on newlines (`stream_text.lines`)."""),
        new_code_cell(SETUP),
        new_code_cell('''\
environment = {"HF_MODEL_ID": str(default_model_dir()) if LOCAL else "HuggingFaceTB/SmolLM2-1.7B-Instruct",
               "OPTION_MAX_ROLLING_BATCH_SIZE": "16"}
endpoint = session.deploy("streaming", environment=environment)
runtime = session.runtime(endpoint)'''),
        new_code_cell('''\
request = {"inputs": "Write a haiku about the sea.", "parameters": {"max_new_tokens": 40}, "stream": True}
started = time.perf_counter()
response = runtime.invoke_endpoint_with_response_stream(
    EndpointName=endpoint, Body=json.dumps(request), ContentType="application/json")
print("content type of the stream:", response["ContentType"])
first_token_s, pieces = None, []
for line in lines(response["Body"]):
    if first_token_s is None:
        first_token_s = time.perf_counter() - started
    pieces.append(line["token"]["text"])
    print(line["token"]["text"], end="", flush=True)
total_s = time.perf_counter() - started
print(f"\\n\\nfirst token after {first_token_s * 1000:.0f} ms, {len(pieces)} tokens in {total_s:.2f} s")
streamed = "".join(pieces)
assert streamed == line["generated_text"]         # the last line carries the whole text'''),
        new_markdown_cell("The same request without streaming gives the same text (greedy decoding):"),
        new_code_cell('''\
whole = json.loads(runtime.invoke_endpoint(
    EndpointName=endpoint, ContentType="application/json",
    Body=json.dumps({**request, "stream": False}))["Body"].read())["generated_text"]
print(whole == streamed)
assert whole == streamed'''),
        new_markdown_cell("Chat bodies stream OpenAI `chat.completion.chunk` objects:"),
        new_code_cell('''\
response = runtime.invoke_endpoint_with_response_stream(
    EndpointName=endpoint, ContentType="application/json",
    Body=json.dumps({"messages": [{"role": "user", "content": "Name three primary colors."}],
                     "max_tokens": 40, "temperature": 0, "stream": True}))
text = stream_text(response, echo=True)
assert text.strip()'''),
        new_code_cell(CLEANUP),
    ],
    "04_tensor_parallel.ipynb": [
        new_markdown_cell("""\
# Tensor parallelism on a multi-GPU instance

`TENSOR_PARALLEL_DEGREE=max` shards the model over every GPU of the instance (here an
ml.g5.12xlarge: 4 x A10G, 24 GB each): each rank holds 1/N of every layer's weights and KV
cache, and the ranks all-reduce after the row-parallel layers. Nothing else changes: the same
image, the same requests. `HF_MODEL_ID` stands in for a model directory.

LOCAL runs the same sharding on this machine's CPU (gloo instead of NCCL) with SmolLM2, whose
9 attention heads and 3 KV heads split over 3 ranks, and checks that the sharded endpoint
answers exactly as an unsharded one."""),
        new_code_cell(SETUP),
        new_code_cell('''\
if LOCAL:
    model, degree, instance = str(default_model_dir()), "3", None
else:
    model, degree, instance = "Qwen/Qwen2.5-7B-Instruct", "max", "ml.g5.12xlarge"
environment = {"HF_MODEL_ID": model, "TENSOR_PARALLEL_DEGREE": degree,
               "OPTION_MAX_ROLLING_BATCH_SIZE": "64", "SAGEMAKER_STARTUP_TIMEOUT": "1800"}
sharded = session.deploy("tp", environment=environment, instance_type=instance)
runtime = session.runtime(sharded)'''),
        new_code_cell('''\
request = {"inputs": "The three laws of thermodynamics are", "parameters": {"max_new_tokens": 16}}
sharded_text = json.loads(runtime.invoke_endpoint(
    EndpointName=sharded, ContentType="application/json", Body=json.dumps(request))["Body"].read())["generated_text"]
print(sharded_text)'''),
        new_markdown_cell("LOCAL only: the container's own `/models` route shows the rank count, and an unsharded endpoint gives the same greedy answer."),
        new_code_cell('''\
if LOCAL:
    import urllib.request
    with urllib.request.urlopen(session.local_url(sharded) + "/models") as r:
        name = json.load(r)["models"][0]["modelName"]
    with urllib.request.urlopen(session.local_url(sharded) + f"/models/{name}") as r:
        described = json.load(r)[0]
    print("tensorParallelDegree:", described["tensorParallelDegree"], "ranks:", described["workers"][0]["ranks"])
    assert described["tensorParallelDegree"] == 3
    session.delete(sharded)
    single = session.deploy("tp1", environment={**environment, "TENSOR_PARALLEL_DEGREE": "1"})
    single_text = json.loads(session.runtime(single).invoke_endpoint(
        EndpointName=single, ContentType="application/json", Body=json.dumps(request))["Body"].read())["generated_text"]
    print(single_text)
    assert single_text == sharded_text'''),
        new_code_cell(CLEANUP),
    ],
    "05_benchmark.ipynb": [
        new_markdown_cell("""\
# Benchmarking an endpoint

`bench_endpoint.py` runs N concurrent streaming clients (boto3, one connection each) and reports
output tokens/s, requests/s, and p50 / p90 / p99 of time to first token (TTFT), end-to-end
latency and time per output token, as `vllm bench serve` defines them. Requests ignore EOS so
every one generates exactly `max_new_tokens`. The same script works from the command line:
`python sagemaker_examples/bench_endpoint.py --endpoint NAME --concurrency 1 8 32`."""),
        new_code_cell(SETUP),
        new_code_cell('''\
from bench_endpoint import TABLE_HEADER, run, runtime_client

environment = {"HF_MODEL_ID": str(default_model_dir()) if LOCAL else "HuggingFaceTB/SmolLM2-1.7B-Instruct",
               "OPTION_MAX_ROLLING_BATCH_SIZE": "32"}
endpoint = session.deploy("bench", environment=environment)
endpoint_url = session.local_url(endpoint) if LOCAL else None'''),
        new_code_cell('''\
# Small on a CPU (LOCAL); raise them on a GPU instance.
levels, requests, max_new_tokens = ([1, 4], 8, 16) if LOCAL else ([1, 8, 32], 128, 256)
print(TABLE_HEADER)
reports = []
for concurrency in levels:
    report = run(runtime_client(endpoint_url, concurrency), endpoint, concurrency, requests,
                 "Tell me about the history of the printing press.", max_new_tokens)
    reports.append(report)
    print(report.table_row())
for report in reports:
    assert report.failures == 0
    assert report.output_tokens == requests * max_new_tokens'''),
        new_code_cell(CLEANUP),
    ],
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()

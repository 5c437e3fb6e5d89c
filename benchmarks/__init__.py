"""Benchmarks that run exported artifacts: accuracy (FP32 vs INT8 per runtime); latency arrives with its issue."""

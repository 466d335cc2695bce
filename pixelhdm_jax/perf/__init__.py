"""Measuring tools: FLOPs and MFU, the platform programs are built for, ahead-of-time compiles for TPU slices and
GPUs, and the train-step and sampling benchmarks (`launch/bench.py`, `launch/gpu_bench.py`, `launch/compile.py`)."""

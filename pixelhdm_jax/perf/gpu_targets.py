"""NVIDIA GPUs to compile for without one: the device description XLA's CUDA compiler needs.

The JAX CUDA plugin (`pip install 'jax[cuda12]'`) makes compile-only GPU devices from a `target_config`
(a `GpuTargetConfigProto` in text format) instead of a local GPU, so `launch/compile.py --topology=h100x8`
reports the train step's memory per GPU on a CPU host. The numbers below are the cards' datasheet and
CUDA device-query values. Without a GPU nothing can be autotuned, so Triton GEMM fusions are turned off
(`COMPILER_OPTIONS`) and matmuls go to cuBLAS: memory is close to, not exactly, what a real card compiles.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class GpuSpec(NamedTuple):
  """What XLA's GPU compiler reads from a device: limits, sizes, compute capability, software versions."""
  description: str  # `jax.Device.device_kind` of the real card
  compute_capability: tuple[int, int]
  core_count: int  # streaming multiprocessors
  device_memory_bytes: int  # what CUDA reports as total memory
  memory_bandwidth: int  # bytes per second
  l2_cache_bytes: int
  clock_rate_ghz: float
  shared_memory_per_core: int
  shared_memory_per_block_optin: int
  fpus_per_core: int = 128
  threads_per_core_limit: int = 2048
  cuda_version: tuple[int, int] = (12, 8)
  cudnn_version: tuple[int, int] = (9, 7)

  def target_config(self) -> str:
    """The `GpuTargetConfigProto` text the CUDA plugin's compile-only topology takes."""
    major, minor = self.compute_capability
    info = {"threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 48 * 1024,
            "shared_memory_per_core": self.shared_memory_per_core,
            "threads_per_core_limit": self.threads_per_core_limit, "core_count": self.core_count,
            "fpus_per_core": self.fpus_per_core, "block_dim_limit_x": 2**31 - 1,
            "block_dim_limit_y": 65535, "block_dim_limit_z": 65535, "memory_bandwidth": self.memory_bandwidth,
            "l2_cache_size": self.l2_cache_bytes, "clock_rate_ghz": self.clock_rate_ghz,
            "device_memory_size": self.device_memory_bytes,
            "shared_memory_per_block_optin": self.shared_memory_per_block_optin,
            "registers_per_core_limit": 65536, "registers_per_block_limit": 65536}
    lines = ["gpu_device_info {", *(f"  {key}: {value}" for key, value in info.items()),
             f"  cuda_compute_capability {{ major: {major} minor: {minor} }}", "}",
             f"runtime_version {{ major: {self.cuda_version[0]} minor: {self.cuda_version[1]} patch: 0 }}",
             'platform_name: "CUDA"',
             f"dnn_version_info {{ major: {self.cudnn_version[0]} minor: {self.cudnn_version[1]} }}",
             f'device_description_str: "{self.description}"']
    return "\n".join(lines) + "\n"


# Hopper: 228 KiB shared memory per SM, 227 KiB of it for one block on request.
_HOPPER = dict(compute_capability=(9, 0), core_count=132, l2_cache_bytes=50 * 2**20, clock_rate_ghz=1.98,
               shared_memory_per_core=228 * 1024, shared_memory_per_block_optin=227 * 1024)
GPUS = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", device_memory_bytes=84_929_347_584, memory_bandwidth=3_352_320_000_000,
                    **_HOPPER),
}
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}  # Triton tiles need autotuning on a real GPU


def parse_gpu_topology(name: str) -> tuple[GpuSpec, int] | None:
  """`h100` or `h100x8` -> (spec, GPUs on the host); None for names that are not GPU targets."""
  match = re.fullmatch(r"([a-z0-9]+?)(?:x(\d+))?", name)
  if not match or match.group(1) not in GPUS:
    return None
  count = int(match.group(2) or 1)
  if count < 1:
    raise ValueError(f"GPU topology {name!r} needs at least one GPU")
  return GPUS[match.group(1)], count

"""Where a compiled step's time must go, read from its optimized HLO without running it: a roofline per kernel.

Each top-level kernel of the program (a fusion, a cuBLAS or cuDNN call, a copy) moves the bytes of its operands and
results and does the FLOPs of its matmuls; it takes at least max(FLOPs / peak, bytes / bandwidth). Kernels inside
loops (scanned blocks) count once per iteration. Summed per layer, this shows on a CPU host which layers of a GPU
or TPU program are bound by memory and which by matmuls (docs/performance.md, "Reading the compiled program").
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
# Opcodes that launch no kernel: views, tuples, control flow (its bodies are counted), markers.
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "copy-start", "copy-done",
         "async-start", "async-update", "async-done", "iota"}
_GEMM = ("__cublas$gemm", "__cublas$lt$matmul")
_ATTENTION = "__cudnn$fmha"
# Parts of a JAX op_name that say how a layer is reached (autodiff, remat, scan), not which layer it is.
_TRANSFORMS = re.compile(r"jvp\(|transpose\(|checkpoint/|rematted_computation/|while/body/|while/cond/|closed_call/|\)")


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: tuple[str, ...]
  line: str
  root: bool


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One top-level kernel: what it reads and writes and computes per run, and how often the program runs it."""
  name: str
  opcode: str
  scope: str  # the layer, from the op_name metadata, without jvp/transpose/remat wrappers
  backward: bool  # part of the gradient (under `transpose(...)`)
  bytes: int
  flops: int
  count: int  # runs per program run (loop trip counts)

  def seconds(self, peak_flops: float, bandwidth: float) -> float:
    return self.count * max(self.flops / peak_flops, self.bytes / bandwidth)


def array_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape (a tuple counts its elements)."""
  return sum(_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d) for dtype, dims in _ARRAY.findall(shape))


def _dims(shape: str) -> list[int]:
  match = _ARRAY.search(shape)
  return [int(d) for d in match.group(2).split(",") if d] if match else []


def _operands(rest: str) -> tuple[tuple[str, ...], str]:
  """The operand names of an instruction's argument list, and the attributes after it."""
  depth = 1
  for i, char in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return tuple(re.findall(r"%([\w.\-]+)", rest[:i])), rest[i + 1:]
  return tuple(re.findall(r"%([\w.\-]+)", rest)), ""


def parse(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
  """The computations of an HLO module's text (name -> instructions) and the entry computation's name."""
  computations: dict[str, list[Instruction]] = {}
  current, entry = None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
      continue
    instruction = _INSTRUCTION.match(line)
    if instruction and current is not None:
      root, name, shape, opcode, rest = instruction.groups()
      operands, _ = _operands(rest)
      computations[current].append(Instruction(name, shape, opcode, operands, line, root is not None))
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text: pass a module's text (compiled.as_text())")
  return computations, entry


def _called(line: str, key: str) -> str | None:
  match = re.search(key + r"=%([\w.\-]+)", line)
  return match.group(1) if match else None


def _trip_count(instruction: Instruction, computations: dict[str, list[Instruction]]) -> int:
  """A while loop's iterations: XLA's known_trip_count, else the bound of a `i < N` condition, else 1."""
  known = re.search(r'known_trip_count":\{"n":"(\d+)"', instruction.line)
  if known:
    return int(known.group(1))
  condition = computations.get(_called(instruction.line, "condition") or "", [])
  constants = [int(m.group(1)) for i in condition for m in [re.search(r"constant\((\d+)\)", i.line)] if m]
  return constants[0] if len(constants) == 1 and any("direction=LT" in i.line for i in condition) else 1


def _dot_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """2 x output elements x contracted elements of a dot (or a cuBLAS call's backend config)."""
  lhs = _dims(shapes.get(instruction.operands[0], "")) if instruction.operands else []
  contracting = re.search(r'lhs_contracting_dims=\{([0-9,]*)\}|"lhs_contracting_dimensions":\[([^\]]*)\]',
                          instruction.line)
  dims = [int(d) for d in re.findall(r"\d+", next(g for g in contracting.groups() if g is not None))] \
      if contracting else [len(lhs) - 1]
  return 2 * math.prod(_dims(instruction.shape)) * math.prod(lhs[d] for d in dims if d < len(lhs))


def _convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """A matmul written as a convolution (TPU programs; patch embeddings with stride = window): input, kernel and
  output hold M*K, K*N and M*N elements, so the product is 2 * sqrt(their product). Padded or overlapping windows
  (weight gradients on TPU) are counted as that matmul too."""
  sizes = [math.prod(_dims(shapes.get(operand, ""))) for operand in instruction.operands[:2]]
  return 2 * math.isqrt(sizes[0] * sizes[1] * math.prod(_dims(instruction.shape))) if len(sizes) == 2 else 0


def _attention_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """cuDNN flash attention: two matmuls of (batch, heads, q, k) x head_dim forward, five in the backward."""
  scores = re.search(r'"intermediate_tensor_shape":\s*\{"element_type":\s*"\w+",\s*"dimensions":\s*\[([^\]]*)\]',
                     instruction.line)
  if not scores or not instruction.operands:
    return 0
  head_dim = _dims(shapes.get(instruction.operands[0], ""))[-1]
  matmuls = 5 if "Backward" in instruction.line.split("custom_call_target=")[1][:40] else 2
  return 2 * matmuls * math.prod(int(d) for d in re.findall(r"\d+", scores.group(1))) * head_dim


def _flops(instruction: Instruction, computations: dict[str, list[Instruction]], shapes: dict[str, str]) -> int:
  if instruction.opcode == "dot":
    return _dot_flops(instruction, shapes)
  if instruction.opcode == "convolution":
    return _convolution_flops(instruction, shapes)
  if instruction.opcode == "custom-call":
    target = re.search(r'custom_call_target="([^"]+)"', instruction.line)
    if target and target.group(1) in _GEMM:
      return _dot_flops(instruction, shapes)
    if target and target.group(1).startswith(_ATTENTION):
      return _attention_flops(instruction, shapes)
  if instruction.opcode == "fusion":
    body = computations.get(_called(instruction.line, "calls") or "", [])
    return sum(_flops(inner, computations, shapes) for inner in body)
  return 0


def _fusion_bytes(instruction: Instruction, computations: dict[str, list[Instruction]],
                  shapes: dict[str, str]) -> int:
  """Operands and results of a fusion; an operand it only slices counts the slices, an in-place update the update."""
  body = computations.get(_called(instruction.line, "calls") or "", [])
  parameters = {int(m.group(1)): i.name for i in body if i.opcode == "parameter"
                for m in [re.search(r"parameter\((\d+)\)", i.line)] if m}
  users = collections.defaultdict(list)
  for inner in body:
    for position, operand in enumerate(inner.operands):
      users[operand].append((inner, position))
  root = next((i for i in body if i.root), None)
  written = array_bytes(instruction.shape)
  in_place = None
  if root is not None and root.opcode == "dynamic-update-slice":
    in_place = root.operands[0]
    written = array_bytes(shapes.get(root.operands[1], ""))
  read = 0
  for position, operand in enumerate(instruction.operands):
    parameter = parameters.get(position)
    uses = users.get(parameter, [])
    if parameter is not None and parameter == in_place:
      continue
    if uses and all(user.opcode in ("slice", "dynamic-slice") and at == 0 for user, at in uses):
      read += sum(array_bytes(user.shape) for user, _ in uses)
    else:
      read += array_bytes(shapes.get(operand, ""))
  return read + written


def _bytes(instruction: Instruction, computations: dict[str, list[Instruction]], shapes: dict[str, str]) -> int:
  if instruction.opcode == "fusion":
    return _fusion_bytes(instruction, computations, shapes)
  if instruction.opcode in ("slice", "dynamic-slice"):
    return 2 * array_bytes(instruction.shape)
  if instruction.opcode == "dynamic-update-slice":
    return 2 * array_bytes(shapes.get(instruction.operands[1], ""))
  written = array_bytes(instruction.shape)
  if instruction.opcode == "custom-call" and instruction.shape.startswith("("):  # results, then a scratch buffer
    written = sum(array_bytes(part) for part in re.findall(r"\w+\[[0-9,]*\]", instruction.shape)
                  if not part.startswith(("s8[", "u8[")))
  return written + sum(array_bytes(shapes.get(operand, "")) for operand in instruction.operands)


def _scope(line: str) -> tuple[str, bool]:
  """The layer of an instruction (its op_name without the jitted function's name and the transforms), and
  whether it belongs to the gradient."""
  match = re.search(r'op_name="([^"]*)"', line)
  op_name = re.sub(r"jit\(([^()]*)\)", r"\1", match.group(1) if match else "")
  return "/".join(_TRANSFORMS.sub("", op_name).strip("/").split("/")[1:]), "transpose(" in op_name


def kernels(hlo_text: str) -> list[Kernel]:
  """The top-level kernels of an optimized HLO module (`compiled.as_text()`), with their run counts."""
  computations, entry = parse(hlo_text)
  shapes = {i.name: i.shape for body in computations.values() for i in body}
  counts: dict[str, int] = collections.Counter()

  def visit(name: str, count: int) -> None:
    counts[name] += count
    for instruction in computations.get(name, []):
      if instruction.opcode == "while":
        trips = count * _trip_count(instruction, computations)
        for key in ("body", "condition"):
          if _called(instruction.line, key):
            visit(_called(instruction.line, key), trips)
      elif instruction.opcode in ("call", "async-start"):
        for callee in re.findall(r"(?:to_apply|calls)=%([\w.\-]+)", instruction.line):
          visit(callee, count)
      elif instruction.opcode == "conditional":
        for callee in re.findall(r"%([\w.\-]+)", instruction.line.split("branch_computations=")[-1].split("}")[0]):
          visit(callee, count)

  visit(entry, 1)
  result = []
  for name, count in counts.items():
    for instruction in computations[name]:
      if instruction.opcode in _FREE:
        continue
      scope, backward = _scope(instruction.line)
      result.append(Kernel(instruction.name, instruction.opcode, scope, backward,
                           _bytes(instruction, computations, shapes), _flops(instruction, computations, shapes), count))
  return result


@dataclasses.dataclass
class ScopeCost:
  """Kernels of one layer (scope prefix) summed: lower bounds of their time, split by what bounds each kernel."""
  scope: str
  seconds: float = 0.0
  memory_bound_seconds: float = 0.0
  flops: int = 0
  bytes: int = 0
  kernels: int = 0


def by_scope(found: list[Kernel], peak_flops: float, bandwidth: float, depth: int = 4) -> list[ScopeCost]:
  """Kernels grouped by the first `depth` parts of their scope, slowest first."""
  groups: dict[str, ScopeCost] = {}
  for kernel in found:
    scope = "/".join(part for part in kernel.scope.split("/")[:depth] if part) or "(no scope)"
    cost = groups.setdefault(scope, ScopeCost(scope))
    seconds = kernel.seconds(peak_flops, bandwidth)
    cost.seconds += seconds
    cost.memory_bound_seconds += seconds if kernel.bytes * peak_flops > kernel.flops * bandwidth else 0.0
    cost.flops += kernel.count * kernel.flops
    cost.bytes += kernel.count * kernel.bytes
    cost.kernels += kernel.count
  return sorted(groups.values(), key=lambda cost: -cost.seconds)


def summary(hlo_text: str, peak_flops: float, bandwidth: float, model_flops: float, top: int = 10) -> dict[str, Any]:
  """The roofline of one device's program: its FLOPs and bytes, the least time they take at `peak_flops` and
  `bandwidth`, the highest MFU that allows for `model_flops` per device, and the `top` costliest layers."""
  found = kernels(hlo_text)
  bound = sum(kernel.seconds(peak_flops, bandwidth) for kernel in found)
  layers = by_scope(found, peak_flops, bandwidth)
  return {"peak_flops": peak_flops, "bandwidth": bandwidth,
          "program_flops": sum(kernel.count * kernel.flops for kernel in found),
          "bytes": sum(kernel.count * kernel.bytes for kernel in found), "bound_s": bound,
          "memory_bound_s": sum(layer.memory_bound_seconds for layer in layers),
          "mfu_ceiling": model_flops / (bound * peak_flops) if bound > 0 else None,
          "layers": [dataclasses.asdict(layer) for layer in layers[:top]]}

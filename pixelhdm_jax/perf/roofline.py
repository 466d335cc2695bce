"""Where a compiled step's time must go, read from its optimized HLO without running it: a roofline per kernel.

Each top-level kernel of the program (a fusion, a cuBLAS or cuDNN call, a copy) moves the bytes of its operands and
results and does the FLOPs of its matmuls; at a device's peak FLOP/s and memory bandwidth it takes at least
max(FLOPs / peak, bytes / bandwidth). Kernels inside loops (scanned blocks) count once per iteration. Summed per
layer, this shows on a CPU host which layers of a GPU or TPU program are bound by memory and which by matmuls
(docs/performance.md, "Reading the compiled program"). Collectives move bytes over the interconnect, not HBM: they
are summed apart. What the text cannot tell (a loop without a known trip count) is counted in `unresolved`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any

_BITS = {"pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "s32": 32,
         "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64, "c64": 64, "c128": 128,
         "f4e2m1fn": 4, "f8e3m4": 8, "f8e4m3": 8, "f8e4m3fn": 8, "f8e4m3fnuz": 8, "f8e4m3b11fnuz": 8, "f8e5m2": 8,
         "f8e5m2fnuz": 8, "f8e8m0fnu": 8, "token": 0}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,<=]*)\]")
_TILED_LAYOUT = re.compile(r"\{([0-9,]+):T\(([0-9,]+)\)")  # a tiled layout: its minor-to-major order, its first tile
# Opcodes that compute each element from the same element of their operands: a slice of their result reads only
# the sliced elements of each operand.
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "exponential", "log",
                "tanh", "logistic", "sqrt", "rsqrt", "power", "convert", "select", "compare", "clamp"}
_HEADER = re.compile(r"^(ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
# Opcodes that launch no kernel: views, tuples, control flow (its bodies are counted), markers, async halves.
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "iota", "copy-start",
         "copy-done", "async-start", "async-update", "async-done", "send", "send-done", "recv", "recv-done"}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all", "collective-permute",
                "collective-broadcast")
_GEMM = ("__cublas$gemm", "__cublas$lt$matmul")
_ATTENTION = "__cudnn$fmha"
# Parts of a JAX op_name that say how a layer is reached (autodiff, remat, scan), not which layer it is.
_TRANSFORMS = re.compile(r"jvp\(|transpose\(|checkpoint/|rematted_computation/|while/body/|while/cond/|closed_call/|\)")


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One line of HLO text: its name, result shape, opcode, operand names, whether it is its computation's ROOT."""
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
  bytes: int
  flops: int
  count: int  # runs per program run (loop trip counts)
  collective: bool = False  # bytes over the interconnect: not in the memory bound

  def seconds(self, peak_flops: float, bandwidth: float) -> float:
    if self.collective:
      return 0.0
    return self.count * max(self.flops / peak_flops, self.bytes / bandwidth)


def array_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape (a tuple counts its elements; dynamic dimensions at their bound)."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in _BITS:
      raise ValueError(f"unknown HLO element type {dtype!r} in {shape!r}: add its width to roofline._BITS")
    total += _BITS[dtype] * math.prod(int(d.lstrip("<=")) for d in dims.split(",") if d)
  return total // 8


def _dims(shape: str) -> list[int]:
  match = _ARRAY.search(shape)
  return [int(d.lstrip("<=")) for d in match.group(2).split(",") if d] if match else []


def _operands(rest: str) -> tuple[str, ...]:
  """The operand names in an instruction's argument list (up to its closing parenthesis)."""
  depth = 1
  for i, char in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return tuple(re.findall(r"%([\w.\-]+)", rest[:i]))
  return tuple(re.findall(r"%([\w.\-]+)", rest))


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
      computations[current].append(Instruction(name, shape, opcode, _operands(rest), line, root is not None))
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text: pass a module's text (compiled.as_text())")
  return computations, entry


def _called(line: str, key: str) -> str | None:
  match = re.search(key + r"=%([\w.\-]+)", line)
  return match.group(1) if match else None


def _integer(pattern: str, text: str) -> int | None:
  match = re.search(pattern, text)
  return int(match.group(1)) if match else None


def _trip_count(instruction: Instruction, computations: dict[str, list[Instruction]]) -> int | None:
  """A while loop's iterations: XLA's known_trip_count, else the bound of an `i < N` condition, else None."""
  known = _integer(r'known_trip_count":\{"n":"(\d+)"', instruction.line)
  if known is not None:
    return known
  condition = computations.get(_called(instruction.line, "condition") or "", [])
  constants = [_integer(r"constant\((\d+)\)", inner.line) for inner in condition]
  bounds = [bound for bound in constants if bound is not None]
  return bounds[0] if len(bounds) == 1 and any("direction=LT" in i.line for i in condition) else None


def _branches(line: str) -> list[str]:
  """The computations a conditional may run: `branch_computations={...}` or true/false computations."""
  listed = re.search(r"branch_computations=\{([^}]*)\}", line)
  if listed:
    return re.findall(r"%([\w.\-]+)", listed.group(1))
  named = (_called(line, "true_computation"), _called(line, "false_computation"))
  return [name for name in named if name]


def _custom_call_target(instruction: Instruction) -> str:
  match = re.search(r'custom_call_target="([^"]+)"', instruction.line)
  return match.group(1) if match else ""


def _dot_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """2 x output elements x contracted elements of a dot (or a cuBLAS call's backend config)."""
  lhs = _dims(shapes.get(instruction.operands[0], "")) if instruction.operands else []
  contracting = re.search(r'lhs_contracting_dims=\{([0-9,]*)\}|"lhs_contracting_dimensions":\[([^\]]*)\]',
                          instruction.line)
  listed = next((group for group in contracting.groups() if group is not None), "") if contracting else None
  dims = [int(d) for d in re.findall(r"\d+", listed)] if listed is not None else [len(lhs) - 1]
  return 2 * math.prod(_dims(instruction.shape)) * math.prod(lhs[d] for d in dims if d < len(lhs))


def _convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """Grouped convolutions: 2 x output x kernel elements / output features. Ungrouped ones are matmuls in TPU
  programs (and patch embeddings with stride = window): input, kernel and output hold M*K, K*N and M*N elements,
  so 2 * sqrt(their product), also for the padded windows of TPU weight gradients."""
  if len(instruction.operands) < 2:
    return 0
  kernel = _dims(shapes.get(instruction.operands[1], ""))
  output = math.prod(_dims(instruction.shape))
  labels = re.search(r"dim_labels=\w+_(\w+)->", instruction.line)
  grouped = (_integer(r"feature_group_count=(\d+)", instruction.line) or 1) > 1 \
      or (_integer(r"batch_group_count=(\d+)", instruction.line) or 1) > 1
  if grouped and labels and len(labels.group(1)) == len(kernel):
    return 2 * output * math.prod(kernel) // kernel[labels.group(1).index("o")]
  inputs = math.prod(_dims(shapes.get(instruction.operands[0], "")))
  return 2 * math.isqrt(inputs * math.prod(kernel) * output)


def _attention_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """cuDNN flash attention: two matmuls of (batch, heads, q, k) x head_dim forward, five in the backward."""
  scores = re.search(r'"intermediate_tensor_shape":\s*\{"element_type":\s*"\w+",\s*"dimensions":\s*\[([^\]]*)\]',
                     instruction.line)
  if not scores or not instruction.operands:
    return 0
  head_dim = _dims(shapes.get(instruction.operands[0], ""))[-1]
  matmuls = 5 if _custom_call_target(instruction).endswith("Backward") else 2
  return 2 * matmuls * math.prod(int(d) for d in re.findall(r"\d+", scores.group(1))) * head_dim


def _flops(instruction: Instruction, computations: dict[str, list[Instruction]], shapes: dict[str, str]) -> int:
  if instruction.opcode == "dot":
    return _dot_flops(instruction, shapes)
  if instruction.opcode == "convolution":
    return _convolution_flops(instruction, shapes)
  if instruction.opcode == "custom-call":
    target = _custom_call_target(instruction)
    if target in _GEMM:
      return _dot_flops(instruction, shapes)
    if target.startswith(_ATTENTION):
      return _attention_flops(instruction, shapes)
  if instruction.opcode == "fusion":
    body = computations.get(_called(instruction.line, "calls") or "", [])
    return sum(_flops(inner, computations, shapes) for inner in body)
  return 0


def _through_bitcasts(name: str, by_name: dict[str, Instruction]) -> str:
  while name in by_name and by_name[name].opcode == "bitcast":
    name = by_name[name].operands[0]
  return name


def _fusion_bytes(instruction: Instruction, computations: dict[str, list[Instruction]],
                  shapes: dict[str, str]) -> int:
  """Operands and results of a fusion; an operand it only slices counts the slices (`_sliced_elements`), a buffer
  it updates in place (a dynamic-update-slice among its results, also behind bitcasts or in a tuple) the update."""
  body = computations.get(_called(instruction.line, "calls") or "", [])
  by_name = {inner.name: inner for inner in body}
  parameters = {_integer(r"parameter\((\d+)\)", inner.line): inner.name for inner in body
                if inner.opcode == "parameter"}
  users = collections.defaultdict(list)
  for inner in body:
    for position, operand in enumerate(inner.operands):
      users[operand].append((inner, position))
  root = next((inner for inner in body if inner.root), None)
  outputs = [] if root is None else list(root.operands) if root.opcode == "tuple" else [root.name]
  results = [_through_bitcasts(name, by_name) for name in outputs]
  written, in_place = 0, set()
  for result in results:
    update = by_name.get(result)
    if update is not None and update.opcode == "dynamic-update-slice":
      in_place.add(_through_bitcasts(update.operands[0], by_name))
      written += array_bytes(shapes.get(update.operands[1], ""))
    else:
      written += array_bytes(shapes.get(result, ""))
  if not results:
    written = array_bytes(instruction.shape)
  read = 0
  for position, operand in enumerate(instruction.operands):
    parameter = parameters.get(position)
    if parameter in in_place:
      continue
    whole = array_bytes(shapes.get(operand, ""))
    sliced = _sliced_elements(parameter, users, by_name)
    elements = math.prod(_dims(shapes.get(operand, ""))) or 1
    read += whole if sliced is None else min(whole, whole * sliced // elements)
  return read + written


def _sliced_elements(name: str | None, users: dict[str, list[tuple[Instruction, int]]],
                     by_name: dict[str, Instruction]) -> int | None:
  """How many elements of `name` a fusion reads when it only slices it, directly or behind bitcasts and elementwise
  ops (a wide matmul output whose column blocks feed separate fusions, its bias added first); None when some use
  reads it whole."""
  uses = users.get(name or "", [])
  if not uses:
    return None
  total = 0
  for user, position in uses:
    if user.opcode == "bitcast" or (user.opcode in _ELEMENTWISE
                                    and _dims(user.shape) == _dims(by_name[name].shape)):
      part = _sliced_elements(user.name, users, by_name)
    elif user.opcode in ("slice", "dynamic-slice") and position == 0:
      part = _touched_elements(user, by_name[name].shape)
    else:
      part = None
    if part is None:
      return None
    total += part
  return total


def _touched_elements(slice_: Instruction, operand_shape: str) -> int:
  """The elements a slice reads: its own, or on a tiled layout (TPU, `T(8,128)`) those of every tile it touches,
  as memory moves whole tiles."""
  kept = _dims(slice_.shape)
  tiled = _TILED_LAYOUT.search(operand_shape)
  full = _dims(operand_shape)
  if tiled is None or len(full) != len(kept):
    return math.prod(kept)
  minor_to_major = [int(d) for d in tiled.group(1).split(",")]
  tile = [int(t) for t in tiled.group(2).split(",")]
  listed = re.search(r"slice=\{([^}]*)\}", slice_.line) if slice_.opcode == "slice" else None
  bounds = re.findall(r"\[(\d+):(\d+)", listed.group(1)) if listed else []
  extents = list(kept)
  for dim, size in zip(minor_to_major, reversed(tile)):  # the last tile size goes with the minor-most dimension
    start, limit = (int(b) for b in bounds[dim]) if bounds else (0, kept[dim])
    extents[dim] = min(full[dim], (math.ceil(limit / size) - start // size) * size)
  return math.prod(extents)


def _bytes(instruction: Instruction, computations: dict[str, list[Instruction]], shapes: dict[str, str]) -> int:
  if instruction.opcode == "fusion":
    return _fusion_bytes(instruction, computations, shapes)
  if instruction.opcode in ("slice", "dynamic-slice"):
    return 2 * array_bytes(instruction.shape)
  if instruction.opcode == "dynamic-update-slice":
    return 2 * array_bytes(shapes.get(instruction.operands[1], ""))
  written = array_bytes(instruction.shape)
  results = _ARRAY.findall(instruction.shape)
  if instruction.opcode == "custom-call" and instruction.shape.startswith("(") and len(results) > 1 \
      and results[-1][0] in ("s8", "u8"):  # a library call's last result is its scratch workspace
    written -= array_bytes("{}[{}]".format(*results[-1]))
  return written + sum(array_bytes(shapes.get(operand, "")) for operand in instruction.operands)


def _scope(line: str) -> str:
  """The layer of an instruction: its op_name without the jitted function's name and the transforms."""
  match = re.search(r'op_name="([^"]*)"', line)
  op_name = re.sub(r"jit\(([^()]*)\)", r"\1", match.group(1) if match else "")
  return "/".join(_TRANSFORMS.sub("", op_name).strip("/").split("/")[1:])


def _is_collective(opcode: str) -> bool:
  return opcode.removesuffix("-start").removesuffix("-done") in _COLLECTIVES


def kernels(hlo_text: str) -> tuple[list[Kernel], list[str]]:
  """The top-level kernels of an optimized HLO module (`compiled.as_text()`) with their run counts, and what
  could not be resolved: loops without a known trip count (counted once), conditionals (every branch counted),
  async ops printed in short form (`fusion-start`; not counted)."""
  computations, entry = parse(hlo_text)
  shapes = {i.name: i.shape for body in computations.values() for i in body}
  counts: dict[str, int] = collections.Counter()
  unresolved: list[str] = []

  def visit(name: str, count: int) -> None:
    counts[name] += count
    for instruction in computations.get(name, []):
      if instruction.opcode == "while":
        trips = _trip_count(instruction, computations)
        if trips is None:
          unresolved.append(f"while loop {instruction.name}: trip count unknown, counted once")
        for key in ("body", "condition"):
          if _called(instruction.line, key):
            visit(_called(instruction.line, key), count * (trips or 1))
      elif instruction.opcode == "conditional":
        unresolved.append(f"conditional {instruction.name}: every branch counted")
        for branch in _branches(instruction.line):
          visit(branch, count)
      elif instruction.opcode in ("call", "async-start"):  # an async wrapper's computation holds the kernel
        for callee in re.findall(r"(?:to_apply|calls)=%([\w.\-]+)", instruction.line):
          visit(callee, count)
      elif instruction.opcode.endswith("-start") and instruction.opcode != "copy-start" \
          and not _is_collective(instruction.opcode):
        unresolved.append(f"{instruction.opcode} {instruction.name}: an async op in short form, not counted")

  visit(entry, 1)
  found = []
  for name, count in counts.items():
    for instruction in computations[name]:
      opcode = instruction.opcode
      if opcode in _FREE or opcode.endswith(("-done", "-update")) or (
          opcode.endswith("-start") and not _is_collective(opcode)):
        continue  # the halves of async ops: the kernel is the wrapped op (or the collective's start)
      collective = _is_collective(opcode)
      found.append(Kernel(instruction.name, opcode, _scope(instruction.line),
                          _bytes(instruction, computations, shapes),
                          0 if collective else _flops(instruction, computations, shapes), count, collective))
  return found, unresolved


def grouped(unresolved: list[str]) -> list[str]:
  """`kernels`' notes ("<kind> <instruction>: <what>") one line per kind and what, with how many there are: a TPU
  program has hundreds of alike async slices."""
  groups = collections.defaultdict(list)
  for note in unresolved:
    head, what = note.split(": ", 1)
    kind, name = head.rsplit(" ", 1)
    groups[kind, what].append(name)
  return [f"{kind} {names[0]}: {what}" if len(names) == 1 else f"{len(names)} x {kind} ({names[0]}, ...): {what}"
          for (kind, what), names in groups.items()]


@dataclasses.dataclass
class ScopeCost:
  """Kernels of one layer (scope prefix) summed: lower bounds of their time, split by what bounds each kernel."""
  scope: str
  seconds: float = 0.0
  memory_bound_seconds: float = 0.0
  flops: int = 0
  bytes: int = 0
  launches: int = 0


def by_scope(found: list[Kernel], peak_flops: float, bandwidth: float, depth: int = 4) -> list[ScopeCost]:
  """Kernels (collectives left out) grouped by the first `depth` parts of their scope, slowest first."""
  groups: dict[str, ScopeCost] = {}
  for kernel in found:
    if kernel.collective:
      continue
    scope = "/".join(part for part in kernel.scope.split("/")[:depth] if part) or "(no scope)"
    cost = groups.setdefault(scope, ScopeCost(scope))
    seconds = kernel.seconds(peak_flops, bandwidth)
    cost.seconds += seconds
    cost.memory_bound_seconds += seconds if kernel.bytes * peak_flops > kernel.flops * bandwidth else 0.0
    cost.flops += kernel.count * kernel.flops
    cost.bytes += kernel.count * kernel.bytes
    cost.launches += kernel.count
  return sorted(groups.values(), key=lambda cost: -cost.seconds)


def summary(hlo_text: str, peak_flops: float, bandwidth: float, model_flops: float, top: int = 10) -> dict[str, Any]:
  """The roofline of one device's program: its FLOPs and HBM bytes, the least time they take at `peak_flops` and
  `bandwidth`, the highest MFU that allows for `model_flops` per device, the `top` costliest layers, the bytes of
  its collectives, and what could not be resolved."""
  found, unresolved = kernels(hlo_text)
  layers = by_scope(found, peak_flops, bandwidth)
  bound = sum(layer.seconds for layer in layers)
  return {"peak_flops": peak_flops, "bandwidth": bandwidth,
          "program_flops": sum(layer.flops for layer in layers), "bytes": sum(layer.bytes for layer in layers),
          "bound_s": bound, "memory_bound_s": sum(layer.memory_bound_seconds for layer in layers),
          "mfu_ceiling": model_flops / (bound * peak_flops) if bound > 0 else None,
          "collective_bytes": sum(k.count * k.bytes for k in found if k.collective), "unresolved": unresolved,
          "layers": [dataclasses.asdict(layer) for layer in layers[:top]]}

"""The roofline of compiled programs (perf/roofline.py) against XLA's own cost analysis and closed forms."""

import jax
import jax.numpy as jnp
import pytest

from pixelhdm_jax.kernels import attention
from pixelhdm_jax.perf import aot, gpu_targets, roofline


def compiled(fn, *shapes, dtype=jnp.float32):
  return jax.jit(fn).lower(*(jax.ShapeDtypeStruct(shape, dtype) for shape in shapes)).compile()


def found(program):
  kernels, unresolved = roofline.kernels(program.as_text() if hasattr(program, "as_text") else program)
  return kernels, unresolved


def totals(kernels):
  return sum(k.count * k.flops for k in kernels), sum(k.count * k.bytes for k in kernels)


def test_a_matmul_and_an_activation_count_what_xla_counts():
  program = compiled(lambda a, b: jnp.tanh(a @ b), (256, 512), (512, 128))
  kernels, unresolved = found(program)
  cost = program.cost_analysis()
  assert totals(kernels) == (cost["flops"], cost["bytes accessed"]) and not unresolved
  assert cost["flops"] == 2 * 256 * 512 * 128


def test_an_elementwise_chain_is_one_kernel_reading_two_arrays_and_writing_one():
  program = compiled(lambda x, y: jnp.exp(x * 2.0 + y) - y, (64, 1000), (64, 1000))
  kernels, _ = found(program)
  assert len(kernels) == 1 and kernels[0].flops == 0
  assert kernels[0].bytes == 3 * 64 * 1000 * 4 == program.cost_analysis()["bytes accessed"]


def test_a_scanned_layer_counts_once_per_step_and_reads_one_slice_of_the_stack():
  steps, width = 7, 128

  def scanned(x, stack):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, stack)[0]

  kernels, unresolved = found(compiled(scanned, (32, width), (steps, width, width)))
  assert totals(kernels)[0] == steps * 2 * 32 * width * width and not unresolved
  assert {k.count for k in kernels if k.flops} == {steps}
  slicing = [k for k in kernels if k.scope.endswith("dynamic_slice")]
  assert len(slicing) == 1 and slicing[0].count == steps
  assert slicing[0].bytes == 2 * width * width * 4 + 4  # one layer's weights read and written, the index read


def test_a_scan_writes_each_output_row_in_place_not_the_whole_stack():
  steps = 7
  program = compiled(lambda x: jax.lax.scan(lambda h, _: (h * 1.5, jnp.tanh(h)), x, None, length=steps)[1], (32, 128))
  writes = [k for k in found(program)[0] if k.scope.endswith("dynamic_update_slice")]
  assert len(writes) == 1 and writes[0].count == steps
  assert writes[0].bytes == 2 * 32 * 128 * 4 + 4  # the row read and written, the index read


# A fusion that writes one row into a 100 x 1024 stack in place, its result behind a bitcast and in a tuple.
IN_PLACE = """
%update (stack: f32[100,1024], row: f32[1,1024], i: s32[]) -> (f32[102400], f32[1,1024]) {
  %stack = f32[100,1024]{1,0} parameter(0)
  %row = f32[1,1024]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %zero = s32[] constant(0)
  %written = f32[100,1024]{1,0} dynamic-update-slice(%stack, %row, %i, %zero)
  %flat = f32[102400]{0} bitcast(%written)
  ROOT %out = (f32[102400]{0}, f32[1,1024]{1,0}) tuple(%flat, %row)
}

ENTRY %main (stack: f32[100,1024], row: f32[1,1024], i: s32[]) -> (f32[102400], f32[1,1024]) {
  %stack = f32[100,1024]{1,0} parameter(0)
  %row = f32[1,1024]{1,0} parameter(1)
  %i = s32[] parameter(2)
  ROOT %fusion = (f32[102400]{0}, f32[1,1024]{1,0}) fusion(%stack, %row, %i), kind=kLoop, calls=%update
}
"""


def test_an_in_place_update_behind_a_bitcast_in_a_tuple_counts_the_row():
  (kernel,), _ = found(IN_PLACE)
  assert kernel.bytes == 4 * 1024 + 4 + 4 * 1024 + 4 * 1024  # row read, index read, row written twice (2 results)


# Two fusions reading column blocks of one wide (64 x 96) matmul output behind a bitcast, as the pixel AdaLN's six
# modulations are read on GPU: `modulate` slices two 16-wide blocks; `gate` slices one and also sums all of it.
COLUMN_BLOCKS = """
%modulate (wide: f32[64,96], x: f32[4,16,16]) -> f32[4,16,16] {
  %wide = f32[64,96]{1,0} parameter(0)
  %x = f32[4,16,16]{2,1,0} parameter(1)
  %view = f32[4,16,96]{2,1,0} bitcast(%wide)
  %scale = f32[4,16,16]{2,1,0} slice(%view), slice={[0:4], [0:16], [0:16]}
  %shift = f32[4,16,16]{2,1,0} slice(%view), slice={[0:4], [0:16], [16:32]}
  %scaled = f32[4,16,16]{2,1,0} multiply(%x, %scale)
  ROOT %out = f32[4,16,16]{2,1,0} add(%scaled, %shift)
}

%sum (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%gate (wide: f32[64,96], x: f32[4,16,16]) -> (f32[4,16,16], f32[]) {
  %wide.g = f32[64,96]{1,0} parameter(0)
  %x.g = f32[4,16,16]{2,1,0} parameter(1)
  %view.g = f32[4,16,96]{2,1,0} bitcast(%wide.g)
  %block = f32[4,16,16]{2,1,0} slice(%view.g), slice={[0:4], [0:16], [32:48]}
  %gated = f32[4,16,16]{2,1,0} multiply(%x.g, %block)
  %zero = f32[] constant(0)
  %total = f32[] reduce(%view.g, %zero), dimensions={0,1,2}, to_apply=%sum
  ROOT %out.g = (f32[4,16,16]{2,1,0}, f32[]) tuple(%gated, %total)
}

ENTRY %main (wide: f32[64,96], x: f32[4,16,16]) -> (f32[4,16,16], f32[]) {
  %wide.e = f32[64,96]{1,0} parameter(0)
  %x.e = f32[4,16,16]{2,1,0} parameter(1)
  %m = f32[4,16,16]{2,1,0} fusion(%wide.e, %x.e), kind=kLoop, calls=%modulate
  ROOT %g = (f32[4,16,16]{2,1,0}, f32[]) fusion(%wide.e, %m), kind=kLoop, calls=%gate
}
"""


def test_column_blocks_of_a_wide_output_behind_a_bitcast_count_the_blocks():
  kernels, _ = found(COLUMN_BLOCKS)
  bytes_of = {k.name: k.bytes for k in kernels}
  block = 4 * 16 * 16 * 4
  assert bytes_of["m"] == 2 * block + block + block  # two blocks of the wide output, x, the result
  assert bytes_of["g"] == 64 * 96 * 4 + block + block + 4  # read whole by its reduce: all of it counts


# The same reads on a tiled (TPU) layout: a block of the tiled minor dimension reads whole tiles, a block of rows
# does not.
TILED_BLOCKS = """
%blocks (wide: bf16[64,96]) -> (bf16[4,16,16], bf16[1,16,96]) {
  %wide = bf16[64,96]{1,0:T(8,128)} parameter(0)
  %view = bf16[4,16,96]{2,1,0:T(8,128)} bitcast(%wide)
  %columns = bf16[4,16,16]{2,1,0:T(8,128)} slice(%view), slice={[0:4], [0:16], [0:16]}
  %rows = bf16[1,16,96]{2,1,0:T(8,128)} slice(%view), slice={[0:1], [0:16], [0:96]}
  ROOT %out = (bf16[4,16,16]{2,1,0:T(8,128)}, bf16[1,16,96]{2,1,0:T(8,128)}) tuple(%columns, %rows)
}

%rows_only (wide: bf16[64,96]) -> bf16[1,16,96] {
  %wide.r = bf16[64,96]{1,0:T(8,128)} parameter(0)
  %view.r = bf16[4,16,96]{2,1,0:T(8,128)} bitcast(%wide.r)
  ROOT %rows.r = bf16[1,16,96]{2,1,0:T(8,128)} slice(%view.r), slice={[2:3], [0:16], [0:96]}
}

ENTRY %main (wide: bf16[64,96]) -> bf16[1,16,96] {
  %wide.e = bf16[64,96]{1,0:T(8,128)} parameter(0)
  %b = (bf16[4,16,16]{2,1,0:T(8,128)}, bf16[1,16,96]{2,1,0:T(8,128)}) fusion(%wide.e), kind=kLoop, calls=%blocks
  ROOT %r = bf16[1,16,96]{2,1,0:T(8,128)} fusion(%wide.e), kind=kLoop, calls=%rows_only
}
"""


def test_a_block_of_a_tiled_minor_dimension_reads_whole_tiles():
  kernels, _ = found(TILED_BLOCKS)
  bytes_of = {k.name: k.bytes for k in kernels}
  written = 2 * (4 * 16 * 16 + 16 * 96)
  assert bytes_of["b"] == 2 * 64 * 96 + written  # the column block makes it read the whole operand
  assert bytes_of["r"] == 2 * 16 * 96 * 2  # a block of rows: read and written


# Blocks along a tiled second-minor dimension (the TPU layout of the modulations: `{1,2,0:T(8,128)}` puts the 96
# columns second-minor, tiled by 8), aligned and not, and a block read after a bias add (as the `dots` program does).
ROW_TILES_AND_BIAS = """
%aligned (m: bf16[2,32,96]) -> bf16[2,32,16] {
  %m.a = bf16[2,32,96]{1,2,0:T(8,128)} parameter(0)
  ROOT %block.a = bf16[2,32,16]{1,2,0:T(8,128)} slice(%m.a), slice={[0:2], [0:32], [32:48]}
}

%unaligned (m: bf16[2,32,96]) -> bf16[2,32,6] {
  %m.u = bf16[2,32,96]{1,2,0:T(8,128)} parameter(0)
  ROOT %block.u = bf16[2,32,6]{1,2,0:T(8,128)} slice(%m.u), slice={[0:2], [0:32], [4:10]}
}

%biased (wide: f32[64,96], bias: f32[96]) -> f32[4,16,16] {
  %wide.b = f32[64,96]{1,0} parameter(0)
  %bias.b = f32[96]{0} parameter(1)
  %spread = f32[64,96]{1,0} broadcast(%bias.b), dimensions={1}
  %sum.b = f32[64,96]{1,0} add(%wide.b, %spread)
  %view.b = f32[4,16,96]{2,1,0} bitcast(%sum.b)
  ROOT %block.b = f32[4,16,16]{2,1,0} slice(%view.b), slice={[0:4], [0:16], [16:32]}
}

ENTRY %main (m: bf16[2,32,96], wide: f32[64,96], bias: f32[96]) -> f32[4,16,16] {
  %m.e = bf16[2,32,96]{1,2,0:T(8,128)} parameter(0)
  %wide.e = f32[64,96]{1,0} parameter(1)
  %bias.e = f32[96]{0} parameter(2)
  %a = bf16[2,32,16]{1,2,0:T(8,128)} fusion(%m.e), kind=kLoop, calls=%aligned
  %u = bf16[2,32,6]{1,2,0:T(8,128)} fusion(%m.e), kind=kLoop, calls=%unaligned
  ROOT %b = f32[4,16,16]{2,1,0} fusion(%wide.e, %bias.e), kind=kLoop, calls=%biased
}
"""


def test_blocks_of_a_tiled_second_minor_dimension_and_after_a_bias_count_what_they_touch():
  kernels, _ = found(ROW_TILES_AND_BIAS)
  bytes_of = {k.name: k.bytes for k in kernels}
  assert bytes_of["a"] == 2 * (2 * 32 * 16) * 2  # two whole 8-row tiles read; the block written
  assert bytes_of["u"] == 2 * (2 * 32 * 16) + 2 * (2 * 32 * 6)  # rows 4-10 touch the tiles of rows 0-16
  assert bytes_of["b"] == 4 * (4 * 16 * 16) + 4 * 96 + 4 * (4 * 16 * 16)  # one block of the sum, the bias, the result


BRANCHES = """
%cheap (x: f32[1000]) -> f32[1000] {
  %x = f32[1000]{0} parameter(0)
  ROOT %neg = f32[1000]{0} negate(%x)
}

%dear (x: f32[1000]) -> f32[1000] {
  %x = f32[1000]{0} parameter(0)
  %e = f32[1000]{0} exponential(%x)
  ROOT %t = f32[1000]{0} tanh(%e)
}

ENTRY %main (p: pred[], x: f32[1000]) -> f32[1000] {
  %p = pred[] parameter(0)
  %x = f32[1000]{0} parameter(1)
  ROOT %c = f32[1000]{0} conditional(%p, %x, %x), true_computation=%cheap, false_computation=%dear
}
"""


def test_a_conditional_counts_every_branch_and_says_so():
  kernels, unresolved = found(BRANCHES)
  assert sorted(k.opcode for k in kernels) == ["exponential", "negate", "tanh"]
  indexed = BRANCHES.replace("true_computation=%cheap, false_computation=%dear", "branch_computations={%cheap, %dear}")
  assert sorted(k.opcode for k in found(indexed)[0]) == ["exponential", "negate", "tanh"]
  assert unresolved == ["conditional c: every branch counted"]


def test_a_loop_of_unknown_length_counts_once_and_says_so():
  def loop(x, n):
    return jax.lax.fori_loop(0, n, lambda i, h: jnp.tanh(h @ h), x)

  program = jax.jit(loop).lower(jax.ShapeDtypeStruct((64, 64), jnp.float32),
                                jax.ShapeDtypeStruct((), jnp.int32)).compile()
  kernels, unresolved = found(program)
  assert totals(kernels)[0] == 2 * 64 ** 3
  assert len(unresolved) == 1 and "trip count unknown" in unresolved[0]


# Async slices in short form, as a TPU program prefetches weight blocks into its on-chip memory (`S(1)`).
PREFETCHES = """
ENTRY %main (w: s8[4096]) -> (s8[1024], s8[1024]) {
  %w = s8[4096]{0} parameter(0)
  %slice-start.7 = ((s8[4096]{0}), s8[1024]{0:S(1)}, s32[]) slice-start(%w), slice={[0:1024]}
  %slice-start.8 = ((s8[4096]{0}), s8[1024]{0:S(1)}, s32[]) slice-start(%w), slice={[1024:2048]}
  %slice-done.7 = s8[1024]{0:S(1)} slice-done(%slice-start.7)
  %slice-done.8 = s8[1024]{0:S(1)} slice-done(%slice-start.8)
  ROOT %both = (s8[1024]{0:S(1)}, s8[1024]{0:S(1)}) tuple(%slice-done.7, %slice-done.8)
}
"""


def test_async_ops_in_short_form_are_not_counted_and_their_notes_are_grouped():
  kernels, unresolved = found(PREFETCHES)
  assert kernels == [] and unresolved == [f"slice-start slice-start.{i}: an async op in short form, not counted"
                                          for i in (7, 8)]
  _, branch = found(BRANCHES)
  assert roofline.grouped(unresolved + branch) == [
      "2 x slice-start (slice-start.7, ...): an async op in short form, not counted",
      "conditional c: every branch counted"]


def test_a_strided_patch_convolution_and_a_depthwise_one_count_their_multiplies():
  def patchify(images, kernel):
    return jax.lax.conv_general_dilated(images, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def depthwise(images, kernel):
    return jax.lax.conv_general_dilated(images, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=8)

  for fn, shapes, expected in ((patchify, ((2, 16, 16, 3), (4, 4, 3, 8)), 2 * (2 * 4 * 4) * (4 * 4 * 3) * 8),
                               (depthwise, ((2, 16, 16, 8), (3, 3, 1, 8)), 2 * (2 * 14 * 14 * 8) * 9)):
    program = compiled(fn, *shapes)
    assert totals(found(program)[0])[0] == expected == program.cost_analysis()["flops"]


def test_layers_are_named_by_their_scope():
  def loss(w1, w2):
    x = jnp.ones((16, 64))
    with jax.named_scope("attention"):
      x = jnp.tanh(x @ w1)
    with jax.named_scope("mlp"):
      x = x @ w2
    return jnp.sum(x ** 2)

  kernels, _ = found(compiled(jax.grad(loss, argnums=(0, 1)), (64, 64), (64, 256)))
  layers = {layer.scope: layer for layer in roofline.by_scope(kernels, 1e12, 1e11, depth=1)}
  assert layers["mlp"].flops == 3 * 2 * 16 * 64 * 256  # forward, weight gradient, gradient of its input
  assert layers["attention"].flops == 2 * 2 * 16 * 64 * 64  # forward, weight gradient (its input is constant)


def test_unknown_element_types_and_texts_without_an_entry_are_refused():
  with pytest.raises(ValueError, match=r"unknown HLO element type 'q9'.*roofline._BITS"):
    roofline.array_bytes("q9[4,4]{1,0}")
  assert roofline.array_bytes("(s4[8]{0}, f32[<=10]{0}, token[])") == 4 + 40
  with pytest.raises(ValueError, match="no ENTRY computation"):
    roofline.kernels("%f (x: f32[2]) -> f32[2] {\n  ROOT %x = f32[2]{0} parameter(0)\n}\n")


def test_the_report_of_a_compile_carries_the_roofline_of_a_device_with_a_known_peak(monkeypatch):
  from configs import base
  from pixelhdm_jax.perf import flops
  monkeypatch.setattr(flops, "peak_flops", lambda kind: 1e12)
  monkeypatch.setattr(flops, "peak_bandwidth", lambda kind: 1e11)
  report = aot.compile_train_step(base.get_config("tiny"), aot.compile_target(aot.LOCAL), height=32, width=32,
                                  batch_size=8, roofline_layers=3)
  bound = report["roofline"]
  assert bound["mfu_ceiling"] == pytest.approx(report["model_flops_per_device"] / (bound["bound_s"] * 1e12))
  assert len(bound["layers"]) == 3 and bound["layers"][0]["seconds"] >= bound["layers"][1]["seconds"]
  assert bound["program_flops"] > report["model_flops_per_device"]  # remat recomputes, the encoders run
  assert bound["unresolved"] == []
  assert (bound["collective_bytes"] > 0) == (report["num_devices"] > 1)  # the simulated devices' all-reduces


def test_one_network_pass_does_the_flops_of_the_analytic_counter(monkeypatch):
  """The compiled forward, sharded over the simulated devices, against flops.forward_flops (perf/flops.py)."""
  from configs import base
  from pixelhdm_jax.perf import flops
  monkeypatch.setattr(flops, "peak_flops", lambda kind: 1e12)
  monkeypatch.setattr(flops, "peak_bandwidth", lambda kind: 1e11)
  report = aot.compile_forward(base.get_config("tiny"), aot.compile_target(aot.LOCAL), height=32, width=64,
                               batch_size=8)
  assert report["num_devices"] == len(jax.devices()) and report["memory_per_device"]["peak_bytes"] > 0
  assert report["roofline"]["program_flops"] == pytest.approx(report["model_flops_per_device"], rel=1e-9)


def test_an_h100_program_counts_its_cublas_matmul_and_cudnn_attention():
  try:
    gpu = aot.compile_target("h100x1")
  except aot.CompileError as error:
    pytest.skip(f"needs the JAX CUDA plugin (pip install 'jax[cuda12]'), no GPU: {error}")
  batch, seq, heads, head_dim = 2, 256, 4, 64

  def layer(x, w):
    q = (x @ w).reshape(batch, seq, heads, head_dim)
    return attention.cudnn_attention(q, q, q, None)

  sharding = jax.sharding.SingleDeviceSharding(gpu.devices[0])
  shapes = [jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)
            for shape in ((batch, seq, heads * head_dim), (heads * head_dim, heads * head_dim))]
  forward = jax.jit(layer).lower(*shapes).compile(compiler_options=gpu_targets.COMPILER_OPTIONS)
  assert "__cublas$lt$matmul" in forward.as_text() and "__cudnn$fmhaSoftmax" in forward.as_text()
  matmul, scores = 2 * batch * seq * (heads * head_dim) ** 2, 2 * batch * heads * seq * seq * head_dim
  assert totals(found(forward)[0])[0] == matmul + 2 * scores
  gradient = jax.jit(jax.grad(lambda x, w: jnp.sum(layer(x, w).astype(jnp.float32)), argnums=1))
  text = gradient.lower(*shapes).compile(compiler_options=gpu_targets.COMPILER_OPTIONS).as_text()
  assert "__cudnn$fmhaSoftmaxBackward" in text
  # forward: projection and attention; backward: attention (5 matmuls) and the weight gradient of the projection
  assert totals(found(text)[0])[0] == 2 * matmul + 2 * scores + 5 * scores

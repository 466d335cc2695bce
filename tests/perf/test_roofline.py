"""The roofline of compiled programs (perf/roofline.py) against XLA's own cost analysis and closed forms."""

import jax
import jax.numpy as jnp
import pytest

from configs import base
from pixelhdm_jax.kernels import attention
from pixelhdm_jax.perf import aot, gpu_targets, roofline


def compiled(fn, *shapes, dtype=jnp.float32):
  return jax.jit(fn).lower(*(jax.ShapeDtypeStruct(shape, dtype) for shape in shapes)).compile()


def totals(found):
  return sum(k.count * k.flops for k in found), sum(k.count * k.bytes for k in found)


def test_a_matmul_and_an_activation_count_what_xla_counts():
  program = compiled(lambda a, b: jnp.tanh(a @ b), (256, 512), (512, 128))
  flops, moved = totals(roofline.kernels(program.as_text()))
  cost = program.cost_analysis()
  assert flops == cost["flops"] == 2 * 256 * 512 * 128
  assert moved == cost["bytes accessed"]


def test_an_elementwise_chain_is_one_kernel_reading_two_arrays_and_writing_one():
  program = compiled(lambda x, y: jnp.exp(x * 2.0 + y) - y, (64, 1000), (64, 1000))
  found = roofline.kernels(program.as_text())
  assert len(found) == 1 and found[0].flops == 0
  assert found[0].bytes == 3 * 64 * 1000 * 4 == program.cost_analysis()["bytes accessed"]


def test_a_scanned_layer_counts_once_per_step_and_reads_one_slice_of_the_stack():
  steps, width = 7, 128

  def scanned(x, stack):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, stack)[0]

  found = roofline.kernels(compiled(scanned, (32, width), (steps, width, width)).as_text())
  assert totals(found)[0] == steps * 2 * 32 * width * width
  assert {k.count for k in found if k.flops} == {steps}
  slicing = [k for k in found if k.scope.endswith("dynamic_slice")]
  assert len(slicing) == 1 and slicing[0].count == steps
  assert slicing[0].bytes == 2 * width * width * 4 + 4  # one layer's weights read and written, the index read


def test_a_scan_writes_each_output_row_in_place_not_the_whole_stack():
  steps = 7
  program = compiled(lambda x: jax.lax.scan(lambda h, _: (h * 1.5, jnp.tanh(h)), x, None, length=steps)[1], (32, 128))
  writes = [k for k in roofline.kernels(program.as_text()) if k.scope.endswith("dynamic_update_slice")]
  assert len(writes) == 1 and writes[0].count == steps
  assert writes[0].bytes == 2 * 32 * 128 * 4 + 4  # the row read and written, the index read


def test_a_strided_patch_convolution_counts_its_matmul():
  def patchify(images, kernel):
    return jax.lax.conv_general_dilated(images, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  program = compiled(patchify, (2, 16, 16, 3), (4, 4, 3, 8))
  flops, _ = totals(roofline.kernels(program.as_text()))
  assert flops == 2 * (2 * 4 * 4) * (4 * 4 * 3) * 8 == program.cost_analysis()["flops"]


def test_layers_are_named_by_their_scope_and_the_gradient_is_marked():
  def loss(w1, w2):
    x = jnp.ones((16, 64))
    with jax.named_scope("attention"):
      x = jnp.tanh(x @ w1)
    with jax.named_scope("mlp"):
      x = x @ w2
    return jnp.sum(x ** 2)

  found = roofline.kernels(compiled(jax.grad(loss, argnums=(0, 1)), (64, 64), (64, 256)).as_text())
  layers = {layer.scope: layer for layer in roofline.by_scope(found, 1e12, 1e11, depth=1)}
  assert layers["mlp"].flops == 3 * 2 * 16 * 64 * 256  # forward, weight gradient, gradient of its input
  assert layers["attention"].flops == 2 * 2 * 16 * 64 * 64  # forward, weight gradient (its input is constant)
  assert any(k.backward for k in found) and any(not k.backward for k in found)


def test_the_bound_is_the_slower_of_flops_and_bytes_per_kernel():
  program = compiled(lambda a, b: a @ b, (512, 512), (512, 512))
  found = roofline.kernels(program.as_text())
  matmul_bound = roofline.summary(program.as_text(), peak_flops=1e9, bandwidth=1e15, model_flops=2 * 512 ** 3)
  memory_bound = roofline.summary(program.as_text(), peak_flops=1e15, bandwidth=1e6, model_flops=2 * 512 ** 3)
  assert matmul_bound["bound_s"] == pytest.approx(2 * 512 ** 3 / 1e9)
  assert matmul_bound["mfu_ceiling"] == pytest.approx(1.0) and matmul_bound["memory_bound_s"] == 0
  assert memory_bound["bound_s"] == pytest.approx(totals(found)[1] / 1e6) == memory_bound["memory_bound_s"]


def test_text_without_an_entry_computation_is_refused():
  with pytest.raises(ValueError, match="no ENTRY computation"):
    roofline.kernels("%f (x: f32[2]) -> f32[2] {\n  ROOT %x = f32[2]{0} parameter(0)\n}\n")


def test_the_report_of_a_compile_carries_the_roofline_only_for_a_known_device():
  report = aot.compile_train_step(base.get_config("tiny"), aot.compile_target(aot.LOCAL), height=32, width=32,
                                  batch_size=8)
  assert report["roofline"] is None and report["model_flops_per_device"] > 0  # a CPU has no peak in the tables


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
  program = jax.jit(layer).lower(*shapes).compile(compiler_options=gpu_targets.COMPILER_OPTIONS)
  assert "__cublas$lt$matmul" in program.as_text() and "__cudnn$fmhaSoftmax" in program.as_text()
  flops, _ = totals(roofline.kernels(program.as_text()))
  assert flops == 2 * batch * seq * (heads * head_dim) ** 2 + 4 * batch * heads * seq * seq * head_dim

"""metrics.jsonl after an interruption: a resumed run drops the rows after its checkpoint before appending."""

import json

from pixelhdm_jax.train.metrics import drop_rows_after


def test_rows_after_the_resumed_step_and_a_cut_line_are_dropped(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": 0, "compile_s": 9.5}] + [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
  path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 6, "lo')  # killed mid-write
  drop_rows_after(path, 3)
  assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:4]
  assert "dropped 3 rows after step 3" in caplog.text
  caplog.clear()
  drop_rows_after(path, 3)  # nothing left to drop: the file stays as it is, without a word
  assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:4] and not caplog.text
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]

"""absl flags parsed for the training tests (Grain worker processes read them)."""

import pytest
from absl import flags


@pytest.fixture(autouse=True, scope="session")
def _absl_flags():
  flags.FLAGS.mark_as_parsed()

"""`ConfigError`, defined below every layer so that any of them can raise it.

`pixelhdm_jax.config.validate` raises it for inconsistent settings; the encoders raise it when a checkpoint does
not fit the config (its width, its layer count). The message always names the setting to change.
"""


class ConfigError(ValueError):
  """An inconsistent or unsupported configuration setting."""

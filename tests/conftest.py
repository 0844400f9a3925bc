"""Repo-wide test configuration: every test talks to a local Hub, never to huggingface.co or ~/.cache.

huggingface_hub reads its environment once, when it is first imported, so this module sets it up at import time,
before any test module (or diffusers, which imports huggingface_hub) is imported:

- `HF_ENDPOINT=http://127.0.0.1:<port>`: the local server of the Hub's HTTP API in `tests/hub_server.py`. The port
  is reserved now (bound, not listening), so until a test asks for the `hub_server` fixture any Hub call fails fast
  with "connection refused" instead of reaching the internet or hanging.
- `HF_HOME`: a fresh temporary folder, removed at exit, so every run starts from an empty cache and nothing touches
  ~/.cache. Variables that would move the caches elsewhere (`HF_HUB_CACHE`, ...) are removed.
- `HF_TOKEN`: a fake token (the local Hub accepts any `Bearer` token; writes need one).
- `HF_HUB_DISABLE_XET=1` (the local Hub speaks the LFS protocol, not Xet), `HF_HUB_DISABLE_TELEMETRY=1`,
  `HF_HUB_DISABLE_PROGRESS_BARS=1`; `HF_HUB_OFFLINE` is removed, and 127.0.0.1 is added to `NO_PROXY`.

Subprocess-based tests (e.g. `accelerate launch`, a CLI run with `subprocess`) inherit this environment, so they use
the same Hub and cache; the server itself lives in the pytest process, so such a test must request the `hub_server`
fixture to have it running while the subprocess works.

Fixtures:

- `hub_server` (session): the started `hub_server.HubServer`, with `.endpoint`, `.user`, `.new_repo_id(name)`,
  `.file_entry(repo_id, path, revision)` and `.request_log`. Started on first request only; stopped at session end.
- `hub_repo_id` (function): a repo id under the server's user that no other test uses (the repo is not created).

Fixtures of a sub-package belong in `tests/<subpkg>/conftest.py`, not here.
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

if "huggingface_hub" in sys.modules or "diffusers" in sys.modules:
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point it at the local Hub; "
        "its endpoint and cache paths are now fixed. Do not import it from a pytest plugin or rootdir conftest."
    )

# `--import-mode=importlib` (pyproject.toml) does not put tests/ on sys.path; hub_server.py lives beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_server as hub_server_module  # noqa: E402

_HUB_SOCKET = hub_server_module.reserve_port()
_HF_HOME = tempfile.mkdtemp(prefix="hf_ddpm_tests_hf_home_")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)

for _name in (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGINGFACE_CO_STAGING", "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE", "HF_DATASETS_CACHE",
    "HF_MODULES_CACHE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HUGGING_FACE_HUB_TOKEN", "DIFFUSERS_CACHE",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
):  # fmt: skip
    os.environ.pop(_name, None)
os.environ.update(
    {
        "HF_ENDPOINT": f"http://{hub_server_module.HOST}:{_HUB_SOCKET.getsockname()[1]}",
        "HF_HOME": _HF_HOME,
        "HF_TOKEN": "hf_fake_token_for_the_local_test_hub",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
)
# A proxy configured for the package index must not capture the loopback Hub (httpx honours these variables).
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs tiny tensors: one intra-op thread is faster than two spinning over 2 shared cores (up to 40x
    slower measured with oversubscription). Tests that need more set it themselves."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def hub_server():
    """The local Hub (`hub_server.HubServer`) that `HF_ENDPOINT` points at, started on first use."""
    server = hub_server_module.HubServer(_HUB_SOCKET).start()
    assert server.endpoint == os.environ["HF_ENDPOINT"], "HF_ENDPOINT was changed after tests/conftest.py set it"
    yield server
    server.stop()


@pytest.fixture
def hub_repo_id(hub_server, request) -> str:
    """A repo id (`"<user>/<test name>-<8 hex>"`) no other test uses; the repo itself is not created."""
    return hub_server.new_repo_id(request.node.name)

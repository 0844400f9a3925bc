"""A local server of the Hugging Face Hub's HTTP API, for the test suite.

The tests exercise `push_to_hub`, `hf_hub_download`, `snapshot_download` and `DiffusionPipeline.from_pretrained`
with huggingface_hub's real client, pointed at this server through `HF_ENDPOINT` (see `tests/conftest.py`). There is
no internet here, and the client is never monkeypatched: this module answers the HTTP calls the client makes.

Standard library only (`http.server` + `threading`). It binds 127.0.0.1 only and keeps every repo in memory, with
git-style ids: file `oid`s are git blob hashes, folders get git tree hashes, commits get git commit hashes, so a
client that checks ids against `git hash-object` sees the real thing.

What is served (model repos, and the `datasets/`, `spaces/`, `kernels/` variants of each path):

- `GET /api/whoami-v2`, `POST /api/validate-yaml`
- `POST /api/repos/create`, `DELETE /api/repos/delete`, `POST /api/repos/move`
- `GET /api/{type}s/{repo_id}[/revision/{rev}]` (`?blobs=true` adds sizes, blob ids and LFS info to `siblings`)
- `GET /api/{type}s/{repo_id}/tree/{rev}[/{path}]` (`recursive`, `expand`, paginated with a `Link` header)
- `POST /api/{type}s/{repo_id}/paths-info/{rev}`, `GET .../refs`, `GET .../commits/{rev}`
- `POST|DELETE .../branch/{branch}`, `POST .../tag/{rev}`, `DELETE .../tag/{tag}`, `PUT .../settings`
- `POST /api/{type}s/{repo_id}/preupload/{rev}`: "lfs" for paths matching the repo's `.gitattributes` LFS patterns,
  files of 10 MiB or more, and binary content; "regular" otherwise
- `POST /{repo_id}.git/info/lfs/objects/batch` (basic transfer; the upload `href` points back at this server and the
  `PUT` is checked against the announced sha256 and size), `POST /{repo_id}.git/info/lfs/objects/verify`
- `POST /api/{type}s/{repo_id}/commit/{rev}`: the NDJSON body (`header`, `file`, `lfsFile`, `deletedFile`,
  `deletedFolder`), `create_pr=1`, `parentCommit`
- `HEAD|GET /{repo_id}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag`, `X-Linked-Etag`/`X-Linked-Size` (LFS
  files), `Content-Length`, and single byte ranges

Errors carry the `X-Error-Code` header the client maps to its exceptions: `RepoNotFound` (404, or 401 for a private
repo read without a token) -> `RepositoryNotFoundError`, `RevisionNotFound` -> `RevisionNotFoundError`,
`EntryNotFound` -> `EntryNotFoundError`. Any `Bearer` token is accepted; writes need one, and so do reads of private
repos.

Bounds: request bodies above `max_body_bytes` are refused (413), at most `max_connections` connections are served at
once (the accept loop waits for a free slot), idle or stalled connections time out after `timeout` seconds, the
request log keeps the last 10,000 requests, and `stop()` closes open keep-alive connections and joins every thread.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import datetime
import fnmatch
import hashlib
import http.server
import json
import re
import secrets
import socket
import threading
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["HubServer", "RequestRecord", "reserve_port"]

HOST = "127.0.0.1"

# Files at least this large are stored with LFS whatever their name (the Hub's threshold).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# What the Hub writes as `.gitattributes` in a new model repo: the LFS patterns a preupload checks paths against.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
        "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
        "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
# Path segments that follow a repo id in `/api/{type}s/{repo_id}/...`: they tell a one-segment repo id (`gpt2`)
# apart from a namespaced one (`user/name`).
REPO_API_ACTIONS = {
    "revision", "tree", "preupload", "commit", "paths-info", "refs", "commits", "branch", "tag", "settings",
}  # fmt: skip
REPO_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,96}$")
COMMIT_PREFIX_RE = re.compile(r"^[0-9a-f]{7,40}$")
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


# ----------------------------------------------------------------------------------------------------------------
# Git objects
# ----------------------------------------------------------------------------------------------------------------


def _git_object_id(kind: str, payload: bytes) -> str:
    """sha1 of `"<kind> <len>\\0" + payload`: how git names every object."""
    return hashlib.sha1(f"{kind} {len(payload)}\0".encode() + payload).hexdigest()


def _iso(moment: datetime.datetime) -> str:
    """The Hub's date format, which huggingface_hub's `parse_datetime` expects."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree. `blob_id` is the git blob id (of the LFS pointer for LFS files)."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None = None
    pointer_size: int | None = None

    @property
    def etag(self) -> str:
        # The Hub's ETag: the sha256 for LFS files, the git blob id otherwise (the client names cache blobs after it).
        return self.lfs_sha256 if self.lfs_sha256 is not None else self.blob_id


@dataclasses.dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, FileEntry]
    object_ids: dict[str, str]  # path -> git id, for every file and folder ("" is the root tree)
    title: str
    message: str
    author: str
    date: datetime.datetime


def _build_commit(
    files: dict[str, FileEntry], parent: str | None, title: str, description: str, author: str
) -> Commit:
    """Hash the tree bottom-up the way git does, then the commit object on top of it."""
    folders: dict[str, dict[str, tuple[str, str]]] = collections.defaultdict(dict)  # folder -> name -> (mode, id)
    folders[""] = {}
    for path, entry in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folders.setdefault("/".join(parts[:depth]), {})
        folders["/".join(parts[:-1])][parts[-1]] = ("100644", entry.blob_id)
    object_ids = {path: entry.blob_id for path, entry in files.items()}
    for folder in sorted(folders, key=lambda f: -f.count("/") if f else 1):  # deepest first, root last
        children = folders[folder]
        # git sorts tree entries by name, with a trailing "/" for sub-trees.
        ordered = sorted(children.items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else ""))
        payload = b"".join(f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid) for name, (mode, oid) in ordered)
        tree_id = _git_object_id("tree", payload)
        object_ids[folder] = tree_id
        if folder:
            parent_folder, _, name = folder.rpartition("/")
            folders[parent_folder][name] = ("40000", tree_id)
    date = datetime.datetime.now(datetime.timezone.utc)
    message = title + (f"\n\n{description}" if description else "")
    stamp = f"{author} <{author}@users.noreply.huggingface.co> {int(date.timestamp())} +0000"
    body = f"tree {object_ids['']}\n" + (f"parent {parent}\n" if parent else "")
    body += f"author {stamp}\ncommitter {stamp}\n\n{message}\n"
    oid = _git_object_id("commit", body.encode())
    return Commit(oid, parent, dict(files), object_ids, title, message, author, date)


@dataclasses.dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime.datetime
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    pull_requests: dict[int, str] = dataclasses.field(default_factory=dict)
    blobs: dict[str, bytes] = dataclasses.field(default_factory=dict)  # git blob id -> content
    lfs_objects: dict[str, bytes] = dataclasses.field(default_factory=dict)  # sha256 -> content

    def content(self, entry: FileEntry) -> bytes:
        return self.lfs_objects[entry.lfs_sha256] if entry.lfs_sha256 is not None else self.blobs[entry.blob_id]


class HubError(Exception):
    """An HTTP error answer, with the `X-Error-Code` the client maps to its exception classes."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # more fields of the JSON error body


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request the server answered: what tests look at to check which protocol path the client took."""

    method: str
    path: str
    status: int


# ----------------------------------------------------------------------------------------------------------------
# The HTTP handler
# ----------------------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: _ThreadingServer

    # ---- plumbing -------------------------------------------------------------------------------------------

    def setup(self) -> None:
        self.timeout = self.server.hub.timeout  # bounds how long a stalled or idle connection holds a thread
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass  # the request log replaces stderr noise

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        self._body: bytes | None = None
        self._status = 500
        try:
            # Read the body before routing: an error answered early must not leave it to be parsed as the next request.
            self.body()
            hub._route(self, method, url.path)
        except HubError as err:
            self._send_error(err)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as err:  # a bug here must show in the test, not hang it: answer 400 (500 is retried)
            self.close_connection = True  # the request may not have been read to its end
            self._send_error(HubError(400, f"hub_server internal error: {type(err).__name__}: {err}"))
        finally:
            hub._log(RequestRecord(method, url.path, self._status))

    def body(self) -> bytes:
        """The request body (Content-Length or chunked), read once, refused above `max_body_bytes`."""
        if self._body is not None:
            return self._body
        limit = self.server.hub.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > limit:
                    self.close_connection = True
                    raise HubError(413, f"Request body larger than {limit} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            self._body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > limit:
                self.close_connection = True
                raise HubError(413, f"Request body larger than {limit} bytes")
            self._body = self.rfile.read(length) if length else b""
        return self._body

    def json_body(self) -> Any:
        try:
            return json.loads(self.body() or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def token(self) -> str | None:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        return value.strip() or None if scheme.lower() == "bearer" else None

    def require_token(self) -> None:
        if self.token() is None:
            raise HubError(401, "Invalid credentials in Authorization header")

    def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("X-Request-Id", secrets.token_hex(8))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(obj).encode(), headers=headers)

    def _send_error(self, err: HubError) -> None:
        headers = dict(err.headers)
        # Header values must stay latin-1; the JSON body carries the message verbatim.
        headers["X-Error-Message"] = err.message.encode("ascii", "replace").decode().replace("\n", " ")
        if err.code is not None:
            headers["X-Error-Code"] = err.code
        self.send_json({**err.extra, "error": err.message}, status=err.status, headers=headers)


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads: nothing outlives stop()
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, hub: HubServer, sock: socket.socket) -> None:
        super().__init__((HOST, 0), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # already bound to 127.0.0.1 (see `reserve_port`)
        self.server_address = sock.getsockname()
        self.server_activate()  # listen()
        self.hub = hub
        self._slots = threading.BoundedSemaphore(hub.max_connections)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._open_lock:
            (self._open.add if add else self._open.discard)(conn)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # back-pressure: the accept loop waits for a free slot
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def close_open_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def reserve_port() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1 but not listening yet.

    Binding reserves the port (nothing else can take it before the server starts), while connections to it are still
    refused until `HubServer.start()` calls `listen()`: a test that reaches the Hub without asking for the server fails
    fast instead of hanging.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


# ----------------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------------


class HubServer:
    """An in-memory Hub on 127.0.0.1, answering huggingface_hub's HTTP calls.

    Args:
        sock (`socket.socket`, *optional*, defaults to `None`):
            A socket from [`reserve_port`] to serve on. `None` reserves a free port.
        user (`str`, *optional*, defaults to `"hf-ddpm-tester"`):
            The user `whoami` returns, and the namespace of repos created without one.
        max_body_bytes (`int`, *optional*, defaults to `512 * 1024 * 1024`):
            Largest request body accepted; larger ones get 413.
        max_connections (`int`, *optional*, defaults to `32`):
            Connections served at once; further ones wait in the listen backlog.
        timeout (`float`, *optional*, defaults to `30.0`):
            Seconds an idle or stalled connection may hold its thread.

    Example:
        ```py
        with HubServer() as hub:  # then point HF_ENDPOINT at hub.endpoint before importing huggingface_hub
            ...
        ```
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        user: str = "hf-ddpm-tester",
        max_body_bytes: int = 512 * 1024 * 1024,
        max_connections: int = 32,
        timeout: float = 30.0,
    ) -> None:
        if sock is None:
            sock = reserve_port()
        host = sock.getsockname()[0]
        if host != HOST:
            raise ValueError(f"`sock` must be bound to {HOST}, got {host!r}; the test Hub serves loopback only.")
        if not REPO_NAME_RE.match(user):
            raise ValueError(f"`user` must match {REPO_NAME_RE.pattern}, got {user!r}.")
        self.user = user
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.timeout = timeout
        self.port: int = sock.getsockname()[1]
        self.endpoint = f"http://{HOST}:{self.port}"
        self._sock = sock
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._uploads: dict[str, tuple[str, str, str, int]] = {}  # upload id -> (repo_type, repo_id, sha256, size)
        self._log_records: collections.deque[RequestRecord] = collections.deque(maxlen=10_000)
        self._httpd: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Start listening and serving in a background thread. Returns `self`; a stopped server cannot restart."""
        if self._httpd is not None:
            return self
        if self._sock.fileno() == -1:
            raise RuntimeError("This HubServer was stopped and its socket closed: create a new one.")
        self._httpd = _ThreadingServer(self, self._sock)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub_server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and join every server thread."""
        if self._httpd is None:
            self._sock.close()
            return
        self._httpd.shutdown()  # ends serve_forever
        self._httpd.close_open_connections()  # wakes handler threads blocked on idle keep-alive connections
        self._httpd.server_close()  # closes the listening socket and joins the handler threads
        self._thread.join()
        self._httpd = self._thread = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ---- helpers for tests -------------------------------------------------------------------------------------

    def new_repo_id(self, name: str = "repo") -> str:
        """A repo id under `user` that no other call returns: `"<user>/<name>-<8 hex>"`."""
        # Hub names allow letters, digits, "-", "_" and ".", but no "--" or "..".
        name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.]+", "-", name)).strip("-.")[:60].strip("-.") or "repo"
        return f"{self.user}/{name}-{secrets.token_hex(4)}"

    @property
    def request_log(self) -> list[RequestRecord]:
        """The requests answered so far (the last 10,000), oldest first."""
        with self._lock:
            return list(self._log_records)

    def file_entry(
        self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model"
    ) -> FileEntry | None:
        """How `path` is stored at `revision` (`lfs_sha256` is set for LFS files), or `None` if it is absent."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, token="server")
            return self._resolve(repo, revision).files.get(path)

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self._log_records.append(record)

    # ---- routing ----------------------------------------------------------------------------------------------

    def _route(self, h: _Handler, method: str, path: str) -> None:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        if segments[:1] == ["api"]:
            return self._route_api(h, method, segments[1:])
        if segments[:1] == ["__lfs_upload__"] and len(segments) == 2 and method == "PUT":
            return self._lfs_put(h, segments[1])
        repo_type = "model"
        if segments[:1] and segments[0] in REPO_TYPES and segments[0] != "models":
            repo_type, segments = REPO_TYPES[segments[0]], segments[1:]
        git = next((i for i, s in enumerate(segments) if s.endswith(".git")), None)
        if git is not None and segments[git + 1 : git + 4] == ["info", "lfs", "objects"] and method == "POST":
            repo_id = "/".join(segments[:git] + [segments[git][: -len(".git")]])
            action = "/".join(segments[git + 4 :])
            if action == "batch":
                return self._lfs_batch(h, repo_type, repo_id)
            if action == "verify":
                return self._lfs_verify(h, repo_type, repo_id)
        if "resolve" in segments and method in ("GET", "HEAD"):
            i = segments.index("resolve")
            if i in (1, 2) and len(segments) >= i + 3:
                return self._resolve_file(
                    h, repo_type, "/".join(segments[:i]), segments[i + 1], "/".join(segments[i + 2 :])
                )
        raise HubError(404, f"No route for {method} {path}")

    def _route_api(self, h: _Handler, method: str, seg: list[str]) -> None:
        if seg == ["whoami-v2"] and method == "GET":
            return self._whoami(h)
        if seg == ["validate-yaml"] and method == "POST":
            h.body()  # YAML is not parsed here (no YAML in the standard library): everything is valid
            return h.send_json({"errors": [], "warnings": []})
        if seg[:1] == ["repos"] and len(seg) == 2:
            handler = {
                ("create", "POST"): self._create_repo,
                ("delete", "DELETE"): self._delete_repo,
                ("move", "POST"): self._move_repo,
            }.get((seg[1], method))
            if handler is not None:
                return handler(h)
        if seg[:1] and seg[0] in REPO_TYPES and len(seg) >= 2:
            repo_type, rest = REPO_TYPES[seg[0]], seg[1:]
            n = 2 if len(rest) >= 2 and rest[1] not in REPO_API_ACTIONS else 1
            repo_id, action, args = "/".join(rest[:n]), (rest[n:] or [""])[0], rest[n + 1 :]
            route = {
                ("", "GET"): lambda: self._repo_info(h, repo_type, repo_id, None),
                ("revision", "GET"): lambda: self._repo_info(h, repo_type, repo_id, "/".join(args)),
                ("tree", "GET"): lambda: self._tree(h, repo_type, repo_id, args),
                ("paths-info", "POST"): lambda: self._paths_info(h, repo_type, repo_id, "/".join(args)),
                ("refs", "GET"): lambda: self._refs(h, repo_type, repo_id),
                ("commits", "GET"): lambda: self._commits(h, repo_type, repo_id, "/".join(args)),
                ("preupload", "POST"): lambda: self._preupload(h, repo_type, repo_id, "/".join(args)),
                ("commit", "POST"): lambda: self._commit(h, repo_type, repo_id, "/".join(args)),
                ("branch", "POST"): lambda: self._create_branch(h, repo_type, repo_id, "/".join(args)),
                ("branch", "DELETE"): lambda: self._delete_branch(h, repo_type, repo_id, "/".join(args)),
                ("tag", "POST"): lambda: self._create_tag(h, repo_type, repo_id, "/".join(args)),
                ("tag", "DELETE"): lambda: self._delete_tag(h, repo_type, repo_id, "/".join(args)),
                ("settings", "PUT"): lambda: self._settings(h, repo_type, repo_id),
            }.get((action, method))
            if route is not None:
                return route()
        raise HubError(404, f"No route for {method} /api/{'/'.join(seg)}")

    # ---- repo look-ups (callers hold the lock) ----------------------------------------------------------------

    def _get_repo(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and token is None:
            # What the Hub answers for a private repo without credentials; the client reads it as "not found".
            raise HubError(401, "Invalid username or password.", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch, tag, `refs/heads/...`, `refs/tags/...`, `refs/pr/N`, or a full or abbreviated commit id."""
        rev = revision
        for prefix, refs in (("refs/heads/", repo.branches), ("refs/tags/", repo.tags)):
            if rev.startswith(prefix) and rev[len(prefix) :] in refs:
                return repo.commits[refs[rev[len(prefix) :]]]
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if rev in repo.tags:
            return repo.commits[repo.tags[rev]]
        match = re.fullmatch(r"refs/pr/(\d+)", rev)
        if match and int(match[1]) in repo.pull_requests:
            return repo.commits[repo.pull_requests[int(match[1])]]
        if COMMIT_PREFIX_RE.match(rev):
            found = [oid for oid in repo.commits if oid.startswith(rev)]
            if len(found) == 1:
                return repo.commits[found[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # ---- account and repo management --------------------------------------------------------------------------

    def _whoami(self, h: _Handler) -> None:
        h.require_token()
        h.send_json(
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": self.user,
                "email": f"{self.user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _repo_key_from_payload(self, payload: dict) -> tuple[str, str]:
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}: allowed {sorted(URL_PREFIXES)}")
        for part in (name, organization or self.user):
            if not isinstance(part, str) or not REPO_NAME_RE.match(part) or "--" in part or ".." in part:
                raise HubError(400, f"Invalid repo name {part!r}: use letters, digits, '-', '_', '.' (max 96)")
        return repo_type, f"{organization or self.user}/{name}"

    def _create_repo(self, h: _Handler) -> None:
        h.require_token()
        payload = h.json_body()
        repo_type, repo_id = self._repo_key_from_payload(payload)
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                url = self._url(self._repos[(repo_type, repo_id)])
                # `create_repo(exist_ok=True)` reads the url from this 409 answer, as from a 200 one.
                raise HubError(409, f"You already created this {repo_type} repo: {url}", extra={"url": url})
            repo = Repo(repo_type, repo_id, private, datetime.datetime.now(datetime.timezone.utc))
            initial = self._apply_commit(
                repo, None, [("file", ".gitattributes", DEFAULT_GITATTRIBUTES.encode())], "initial commit", ""
            )
            repo.branches["main"] = initial.oid
            self._repos[(repo_type, repo_id)] = repo
        h.send_json({"url": self._url(repo), "name": repo_id, "id": secrets.token_hex(12)})

    def _delete_repo(self, h: _Handler) -> None:
        h.require_token()
        repo_type, repo_id = self._repo_key_from_payload(h.json_body())
        with self._lock:
            self._get_repo(repo_type, repo_id, h.token())
            del self._repos[(repo_type, repo_id)]
        h.send(200)

    def _move_repo(self, h: _Handler) -> None:
        h.require_token()
        payload = h.json_body()
        repo_type = payload.get("type") or "model"
        src, dst = payload.get("fromRepo"), payload.get("toRepo")
        with self._lock:
            repo = self._get_repo(repo_type, src, h.token())
            if (repo_type, dst) in self._repos:
                raise HubError(409, f"Repository {dst} already exists")
            if not isinstance(dst, str) or dst.count("/") != 1:
                raise HubError(400, f"Invalid destination repo id {dst!r}: expected 'namespace/name'")
            namespace, name = dst.split("/")
            self._repo_key_from_payload({"type": repo_type, "organization": namespace, "name": name})
            del self._repos[(repo_type, src)]
            repo.repo_id = dst
            self._repos[(repo_type, dst)] = repo
        h.send(200)

    def _settings(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        h.require_token()
        payload = h.json_body()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] != "public"
        h.send_json({})

    # ---- reads ------------------------------------------------------------------------------------------------

    def _repo_info(self, h: _Handler, repo_type: str, repo_id: str, revision: str | None) -> None:
        blobs = h.query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            commit = self._resolve(repo, revision or "main")
            siblings = []
            for path in sorted(commit.files):
                entry = commit.files[path]
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=entry.size, blobId=entry.blob_id)
                    if entry.lfs_sha256 is not None:
                        sibling["lfs"] = {
                            "size": entry.size, "sha256": entry.lfs_sha256, "pointerSize": entry.pointer_size
                        }  # fmt: skip
                siblings.append(sibling)
            info = {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.created_at),
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(b) for b in repo.blobs.values()) + sum(map(len, repo.lfs_objects.values())),
            }
            if repo_type == "model":
                info["modelId"] = repo_id
            if repo_type == "space":
                info.update(sdk="static", runtime={"stage": "RUNNING", "hardware": {"current": None}})
        h.send_json(info)

    def _path_info(self, repo: Repo, head: Commit, path: str, is_dir: bool, expand: bool) -> dict[str, Any]:
        if is_dir:
            info: dict[str, Any] = {"type": "directory", "oid": head.object_ids[path], "size": 0, "path": path}
        else:
            entry = head.files[path]
            info = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
            if entry.lfs_sha256 is not None:
                info["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            # The last commit that touched `path`: walk back while the parent has the same object there.
            last = head
            while last.parent is not None and repo.commits[last.parent].object_ids.get(path) == head.object_ids[path]:
                last = repo.commits[last.parent]
            info["lastCommit"] = {"id": last.oid, "title": last.title, "date": _iso(last.date)}
            if not is_dir:
                info["securityFileStatus"] = {"status": "safe", "avScan": None, "pickleImportScan": None}
        return info

    def _tree(self, h: _Handler, repo_type: str, repo_id: str, args: list[str]) -> None:
        if not args:
            raise HubError(400, "Missing revision in tree path")
        revision, folder = args[0], "/".join(args[1:]).strip("/")
        recursive = h.query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        expand = h.query.get("expand", ["false"])[-1].lower() in ("1", "true")
        cursor = int(h.query.get("cursor", ["0"])[-1] or 0)
        page_size = 50 if expand else 1000  # the Hub's page sizes
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            commit = self._resolve(repo, revision)
            if folder and (folder in commit.files or folder not in commit.object_ids):
                raise HubError(404, f"{folder} is not a folder on {revision}", "EntryNotFound",
                               {"X-Repo-Commit": commit.oid})  # fmt: skip
            prefix = f"{folder}/" if folder else ""
            paths = []
            for path in commit.object_ids:
                if path and path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                    paths.append(path)
            paths.sort()
            page = paths[cursor : cursor + page_size]
            entries = [self._path_info(repo, commit, p, p not in commit.files, expand) for p in page]
        headers = {}
        if cursor + page_size < len(paths):
            query = f"recursive={str(recursive).lower()}&expand={str(expand).lower()}&cursor={cursor + page_size}"
            next_url = f"{self.endpoint}/api/{repo_type}s/{repo_id}/tree/{quote(revision, safe='')}"
            next_url += f"/{quote(folder, safe='')}" if folder else ""
            headers["Link"] = f'<{next_url}?{query}>; rel="next"'
        h.send_json(entries, headers=headers)

    def _paths_info(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        form = parse_qs(h.body().decode(), keep_blank_values=True)
        expand = form.get("expand", ["False"])[-1].lower() in ("1", "true")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            commit = self._resolve(repo, revision)
            entries = [
                self._path_info(repo, commit, p.strip("/"), p.strip("/") not in commit.files, expand)
                for p in form.get("paths", [])
                if p.strip("/") and p.strip("/") in commit.object_ids
            ]
        h.send_json(entries)

    def _refs(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            refs = {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()
                ],
                "converts": [],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()],
            }
            if h.query.get("include_prs"):
                refs["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o}
                    for n, o in repo.pull_requests.items()
                ]
        h.send_json(refs)

    def _commits(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            commit: Commit | None = self._resolve(repo, revision or "main")
            history = []
            while commit is not None:
                history.append(
                    {"id": commit.oid, "title": commit.title, "message": commit.message,
                     "authors": [{"user": commit.author}], "date": _iso(commit.date)}
                )  # fmt: skip
                commit = repo.commits[commit.parent] if commit.parent else None
        h.send_json(history)

    def _resolve_file(self, h: _Handler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            commit = self._resolve(repo, revision)
            entry = commit.files.get(path)
            if entry is None:
                # X-Repo-Commit lets the client cache the file's absence for this commit.
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
            content = repo.content(entry)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes"}
        if entry.lfs_sha256 is not None:
            headers.update({"X-Linked-Etag": f'"{entry.lfs_sha256}"', "X-Linked-Size": str(entry.size)})
        status, body = 200, content
        byte_range = h.headers.get("Range")
        if byte_range and h.command == "GET":
            match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", byte_range)
            if not match or not (match[1] or match[2]):
                raise HubError(400, f"Unsupported Range header {byte_range!r}")
            if match[1]:
                start, end = int(match[1]), min(int(match[2]) if match[2] else len(content) - 1, len(content) - 1)
            else:  # suffix range: the last N bytes
                start, end = max(len(content) - int(match[2]), 0), len(content) - 1
            if start >= len(content) or start > end:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(content)}"})
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        h.send(status, body, content_type="application/octet-stream", headers=headers)

    # ---- uploads ----------------------------------------------------------------------------------------------

    def _is_lfs(self, repo: Repo, commit: Commit, path: str, size: int, sample: bytes) -> bool:
        """The Hub's preupload decision: LFS pattern in `.gitattributes`, 10 MiB or more, or binary content."""
        if size >= LFS_SIZE_THRESHOLD or b"\0" in sample:
            return True
        attributes = commit.files.get(".gitattributes")
        if attributes is not None:
            name = path.rsplit("/", 1)[-1]
            for line in repo.content(attributes).decode(errors="replace").splitlines():
                pattern, _, attrs = line.strip().partition(" ")
                if "filter=lfs" in attrs.split():
                    if fnmatch.fnmatchcase(path if "/" in pattern else name, pattern.replace("**/", "")):
                        return True
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError as err:
            return err.start < len(sample) - 4  # a multi-byte character cut by the 512-byte sample is still text
        return False

    def _preupload(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        h.require_token()
        payload = h.json_body()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            commit = self._resolve(repo, revision)
            files = []
            for item in payload.get("files", []):
                path, size = item["path"], int(item["size"])
                lfs = self._is_lfs(repo, commit, path, size, base64.b64decode(item.get("sample", "")))
                info = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
                remote = commit.files.get(path)
                if remote is not None:
                    # What the client compares with its local oid to skip unchanged files: sha256 for LFS files,
                    # the git blob id for regular ones.
                    info["oid"] = remote.lfs_sha256 if lfs else remote.blob_id
                files.append(info)
        h.send_json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        h.require_token()
        payload = h.json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, f"Only the 'upload' LFS operation is served, got {payload.get('operation')!r}")
        objects = []
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            for obj in payload.get("objects", []):
                oid, size = obj.get("oid"), obj.get("size")
                if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int)):
                    objects.append({"oid": str(oid), "size": int(size) if isinstance(size, int) else 0,
                                    "error": {"code": 422, "message": "oid must be a sha256 hex, size an int"}})  # fmt: skip
                    continue
                if oid in repo.lfs_objects and len(repo.lfs_objects[oid]) == size:
                    objects.append({"oid": oid, "size": size})  # already stored: no actions, nothing to upload
                    continue
                upload_id = secrets.token_urlsafe(16)  # the "signed URL": the PUT carries no credentials
                self._uploads[upload_id] = (repo_type, repo_id, oid, size)
                verify = f"{self._url(repo)}.git/info/lfs/objects/verify"
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{self.endpoint}/__lfs_upload__/{upload_id}", "expires_in": 3600},
                            "verify": {"href": verify, "header": {}},
                        },
                    }
                )
        h.send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, h: _Handler, upload_id: str) -> None:
        data = h.body()
        with self._lock:
            target = self._uploads.get(upload_id)
        if target is None:
            raise HubError(403, "Unknown or used upload URL")
        repo_type, repo_id, oid, size = target
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match the announced object (oid {oid}, size {size})")
        with self._lock:
            self._uploads.pop(upload_id, None)
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            repo.lfs_objects[oid] = data
        h.send(200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_verify(self, h: _Handler, repo_type: str, repo_id: str) -> None:
        h.require_token()
        payload = h.json_body()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            data = repo.lfs_objects.get(payload.get("oid"))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} of size {payload.get('size')} was not uploaded")
        h.send_json({"message": "Object verified"})

    # ---- commits and refs -------------------------------------------------------------------------------------

    def _apply_commit(
        self, repo: Repo, parent: Commit | None, ops: list[tuple[str, str, Any]], title: str, description: str
    ) -> Commit:
        """Build the child of `parent` with `ops` applied and store it; the caller moves the ref."""
        files = dict(parent.files) if parent is not None else {}
        for kind, path, value in ops:
            if kind == "file":
                blob_id = _git_object_id("blob", value)
                repo.blobs[blob_id] = value
                files[path] = FileEntry(path, len(value), blob_id)
            elif kind == "lfsFile":
                pointer = LFS_POINTER.format(oid=value, size=len(repo.lfs_objects[value])).encode()
                files[path] = FileEntry(
                    path, len(repo.lfs_objects[value]), _git_object_id("blob", pointer), value, len(pointer)
                )
            elif kind == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif kind == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for name in [name for name in files if name.startswith(prefix)]:
                    del files[name]
        commit = _build_commit(files, parent.oid if parent else None, title, description, self.user)
        repo.commits[commit.oid] = commit
        return commit

    @staticmethod
    def _commit_operations(body: bytes) -> tuple[dict, list[tuple[str, str, Any]]]:
        """The header and the (kind, path, payload) operations of an NDJSON commit body, each path checked."""
        lines = [line for line in body.splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except ValueError as err:
            raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        header = next((item["value"] for item in items if item.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "The commit payload needs a header line with a non-empty summary")
        ops: list[tuple[str, str, Any]] = []
        for item in items:
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                continue
            path = value.get("path", "")
            parts = path.rstrip("/").split("/")
            if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or ".git" in parts:
                raise HubError(400, f"Invalid path in commit: {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}: only 'base64'")
                ops.append(("file", path, base64.b64decode(value["content"])))
            elif key == "lfsFile":
                ops.append(("lfsFile", path, value["oid"]))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, path, None))
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        return header, ops

    def _commit(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        h.require_token()
        header, ops = self._commit_operations(h.body())
        create_pr = h.query.get("create_pr", ["0"])[-1] in ("1", "true", "True")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            base = self._resolve(repo, revision)
            pr_match = re.fullmatch(r"refs/pr/(\d+)", revision)
            if revision not in repo.branches and not (pr_match and int(pr_match[1]) in repo.pull_requests):
                raise HubError(400, f"Can only commit to a branch or a pull request ref, got {revision!r}")
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and parent_commit != base.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            for kind, path, oid in ops:
                if kind == "lfsFile" and oid not in repo.lfs_objects:
                    raise HubError(400, f"LFS object {oid} for {path} was never uploaded (batch + PUT first)")
            commit = self._apply_commit(repo, base, ops, header["summary"], header.get("description", ""))
            pr_url = None
            if create_pr:
                number = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[number] = commit.oid
                pr_url = f"{self._url(repo)}/discussions/{number}"
            elif pr_match:
                repo.pull_requests[int(pr_match[1])] = commit.oid
            else:
                repo.branches[revision] = commit.oid
            url = self._url(repo)
        h.send_json(
            {"success": True, "commitOid": commit.oid, "commitUrl": f"{url}/commit/{commit.oid}",
             "pullRequestUrl": pr_url, "hookOutput": ""}
        )  # fmt: skip

    def _create_branch(self, h: _Handler, repo_type: str, repo_id: str, branch: str) -> None:
        h.require_token()
        payload = h.json_body()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self._resolve(repo, payload.get("startingPoint") or "main").oid
        h.send_json({})

    def _delete_branch(self, h: _Handler, repo_type: str, repo_id: str, branch: str) -> None:
        h.require_token()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            if branch == "main":
                raise HubError(403, "The main branch cannot be deleted")
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Branch {branch} not found", "RevisionNotFound")
        h.send_json({})

    def _create_tag(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> None:
        h.require_token()
        payload = h.json_body()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            tag = payload.get("tag")
            if not tag:
                raise HubError(400, "Missing 'tag' in payload")
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = self._resolve(repo, revision).oid
        h.send_json({})

    def _delete_tag(self, h: _Handler, repo_type: str, repo_id: str, tag: str) -> None:
        h.require_token()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, h.token())
            if repo.tags.pop(tag, None) is None:
                raise HubError(404, f"Tag {tag} not found", "RevisionNotFound")
        h.send_json({})

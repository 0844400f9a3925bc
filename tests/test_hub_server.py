"""The local Hub (tests/hub_server.py) against huggingface_hub's real client and diffusers' real loaders.

Oracles: the bytes that were uploaded, `git hash-object`/`git write-tree` for ids, the client's own exception
classes, and the weights of the pipeline that was pushed.
"""

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import hub_server as hub_server_module
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    create_repo,
    delete_repo,
    hf_hub_download,
    list_repo_files,
    model_info,
    snapshot_download,
    upload_file,
    upload_folder,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def _raw_request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request with the standard library's client, bypassing huggingface_hub: returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Authorization": "Bearer raw", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


@pytest.fixture(scope="module")
def uploaded(hub_server, tmp_path_factory):
    """One repo, uploaded once and only read by the tests that use it: (repo_id, files, commit_info).

    Small text files (regular uploads), a *.safetensors file and an 11 MB file (LFS by name and by size).
    """
    files = {
        "notes.txt": b"DDPM: Ho, Jain, Abbeel 2020\n",
        "weights/tiny/README.txt": b"git sorts tiny.safetensors before this tiny/ folder\n",
        "weights/tiny.safetensors": os.urandom(2048),
        "large.dat": os.urandom(11 * 1024 * 1024),
    }
    repo_id = hub_server.new_repo_id("shared-upload")
    create_repo(repo_id)
    root = _write_folder(tmp_path_factory.mktemp("folder"), files)
    info = upload_folder(repo_id=repo_id, folder_path=root, commit_message="upload test folder")
    return repo_id, files, info


# ---- repos ------------------------------------------------------------------------------------------------------


def test_create_repo_returns_url_on_local_endpoint_and_is_idempotent_with_exist_ok(hub_server, hub_repo_id):
    url = create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id
    assert url.endpoint == hub_server.endpoint
    assert str(url) == f"{hub_server.endpoint}/{hub_repo_id}"

    first_sha = model_info(hub_repo_id).sha
    assert create_repo(hub_repo_id, exist_ok=True).repo_id == hub_repo_id
    assert model_info(hub_repo_id).sha == first_sha  # exist_ok neither recreates nor commits

    with pytest.raises(HfHubHTTPError) as excinfo:
        create_repo(hub_repo_id)
    assert excinfo.value.response.status_code == 409


def test_create_repo_without_namespace_goes_under_whoami_user(hub_server):
    name = hub_server.new_repo_id("bare").split("/")[1]
    assert HfApi().whoami()["name"] == hub_server.user
    assert create_repo(name).repo_id == f"{hub_server.user}/{name}"


def test_delete_repo_makes_it_not_found(hub_server, hub_repo_id):
    create_repo(hub_repo_id)
    delete_repo(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        model_info(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        delete_repo(hub_repo_id)
    delete_repo(hub_repo_id, missing_ok=True)


def test_private_repo_is_not_found_without_token(hub_server, hub_repo_id):
    create_repo(hub_repo_id, private=True)
    assert model_info(hub_repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        model_info(hub_repo_id, token=False)


def test_missing_repo_revision_and_file_raise_the_clients_errors(hub_server, hub_repo_id, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        model_info(hub_server.new_repo_id("never-created"))
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_server.new_repo_id("never-created"), "config.json", cache_dir=tmp_path)

    create_repo(hub_repo_id)
    with pytest.raises(RevisionNotFoundError):
        model_info(hub_repo_id, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, ".gitattributes", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(hub_repo_id, "no_such_file.json", cache_dir=tmp_path)


# ---- uploads ----------------------------------------------------------------------------------------------------


def test_upload_folder_sends_safetensors_and_large_files_through_lfs(hub_server, uploaded):
    repo_id, files, info = uploaded
    for name in ("weights/tiny.safetensors", "large.dat"):
        entry = hub_server.file_entry(repo_id, name)
        assert entry.lfs_sha256 == hashlib.sha256(files[name]).hexdigest()
        assert entry.size == len(files[name])
    assert hub_server.file_entry(repo_id, "notes.txt").lfs_sha256 is None

    repo_paths = [r.path for r in hub_server.request_log if repo_id in r.path and r.status == 200]
    assert any(p.endswith(f"{repo_id}.git/info/lfs/objects/batch") for p in repo_paths)
    lfs_puts = [r for r in hub_server.request_log if r.method == "PUT" and r.path.startswith("/__lfs_upload__/")]
    assert lfs_puts and all(r.status == 200 for r in lfs_puts)
    assert info.oid == model_info(repo_id).sha


def test_lfs_upload_is_checked_against_the_announced_sha256(hub_server, hub_repo_id):
    create_repo(hub_repo_id)
    content = os.urandom(4096)
    oid = hashlib.sha256(content).hexdigest()
    batch = json.dumps({"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": 4096}]})
    status, _, body = _raw_request(hub_server, "POST", f"/{hub_repo_id}.git/info/lfs/objects/batch", batch.encode())
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hub_server.endpoint)
    upload_path = href[len(hub_server.endpoint) :]

    assert _raw_request(hub_server, "PUT", upload_path, content[::-1])[0] == 400  # right size, wrong bytes
    assert _raw_request(hub_server, "PUT", upload_path, content)[0] == 200
    assert _raw_request(hub_server, "PUT", upload_path, content)[0] == 403  # an upload URL is single-use

    status, _, body = _raw_request(hub_server, "POST", f"/{hub_repo_id}.git/info/lfs/objects/batch", batch.encode())
    assert "actions" not in json.loads(body)["objects"][0]  # stored now: nothing left to upload


def test_model_info_lists_siblings_with_lfs_metadata_and_commit_sha(hub_server, uploaded):
    repo_id, files, info = uploaded
    details = model_info(repo_id, files_metadata=True)
    assert details.sha == info.oid
    siblings = {s.rfilename: s for s in details.siblings}
    assert set(siblings) == {".gitattributes", *files}
    assert siblings["notes.txt"].lfs is None
    assert siblings["notes.txt"].size == len(files["notes.txt"])
    lfs = siblings["large.dat"].lfs
    assert (lfs.sha256, lfs.size) == (hashlib.sha256(files["large.dat"]).hexdigest(), len(files["large.dat"]))
    assert sorted(list_repo_files(repo_id)) == sorted([".gitattributes", *files])


def test_ids_are_the_ones_git_computes(hub_server, uploaded, tmp_path):
    """Blob and tree ids match `git hash-object` / `git write-tree` of the same files (LFS files as pointers)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo_id, files, _ = uploaded
    work = tmp_path / "git"
    work.mkdir()
    stored = dict(files)
    for name in ("weights/tiny.safetensors", "large.dat"):
        stored[name] = LFS_POINTER.format(oid=hashlib.sha256(files[name]).hexdigest(), size=len(files[name])).encode()
    stored[".gitattributes"] = hub_server_module.DEFAULT_GITATTRIBUTES.encode()
    for name, content in stored.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(content)

    def git(*args):
        return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    # `git ls-files -s` prints "<mode> <blob id> <stage>\t<path>".
    expected = {line.split("\t")[1]: line.split()[1] for line in git("ls-files", "-s").splitlines()}
    expected["weights"] = git("write-tree", "--prefix=weights/")
    expected["weights/tiny"] = git("write-tree", "--prefix=weights/tiny/")

    tree = {entry.path: entry for entry in HfApi().list_repo_tree(repo_id, recursive=True)}
    assert {path: getattr(e, "blob_id", None) or e.tree_id for path, e in tree.items()} == expected


def test_second_commit_moves_main_and_old_revision_still_downloads(hub_server, hub_repo_id, tmp_path):
    files = {"notes.txt": b"DDPM: Ho, Jain, Abbeel 2020\n", "w.safetensors": os.urandom(1024)}
    root = _write_folder(tmp_path / "folder", files)
    create_repo(hub_repo_id)
    first = upload_folder(repo_id=hub_repo_id, folder_path=root)
    # Unchanged files (the preupload answer carries their remote oids) make no new commit.
    assert upload_folder(repo_id=hub_repo_id, folder_path=root).oid == first.oid

    (root / "notes.txt").write_bytes(b"DDIM: Song, Meng, Ermon 2021\n")
    second = upload_folder(repo_id=hub_repo_id, folder_path=root, commit_message="edit notes")
    assert second.oid != first.oid
    assert model_info(hub_repo_id).sha == second.oid
    assert [c.commit_id for c in HfApi().list_repo_commits(hub_repo_id)][:2] == [second.oid, first.oid]

    old = hf_hub_download(hub_repo_id, "notes.txt", revision=first.oid, cache_dir=tmp_path / "cache")
    new = hf_hub_download(hub_repo_id, "notes.txt", cache_dir=tmp_path / "cache")
    assert open(old, "rb").read() == files["notes.txt"]
    assert open(new, "rb").read() == b"DDIM: Song, Meng, Ermon 2021\n"


def test_commit_on_stale_parent_is_refused(hub_server, hub_repo_id):
    create_repo(hub_repo_id)
    parent = model_info(hub_repo_id).sha
    upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id=hub_repo_id)
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi().create_commit(
            hub_repo_id,
            [CommitOperationAdd(path_in_repo="b.txt", path_or_fileobj=b"two")],
            commit_message="racing commit",
            parent_commit=parent,
        )
    assert excinfo.value.response.status_code == 412


def test_create_pr_commits_to_a_pr_ref_and_leaves_main(hub_server, hub_repo_id, tmp_path):
    create_repo(hub_repo_id)
    main_sha = model_info(hub_repo_id).sha
    info = upload_file(path_or_fileobj=b"proposal", path_in_repo="pr.txt", repo_id=hub_repo_id, create_pr=True)
    assert info.pr_revision == "refs/pr/1"
    assert model_info(hub_repo_id).sha == main_sha
    path = hf_hub_download(hub_repo_id, "pr.txt", revision="refs/pr/1", cache_dir=tmp_path)
    assert open(path, "rb").read() == b"proposal"


def test_tree_listing_is_paginated_and_expands_last_commit(hub_server, hub_repo_id):
    create_repo(hub_repo_id)
    names = [f"shards/part-{i:03d}.txt" for i in range(60)]  # more than one page of 50 expanded entries
    info = HfApi().create_commit(
        hub_repo_id,
        [CommitOperationAdd(path_in_repo=n, path_or_fileobj=n.encode()) for n in names],
        commit_message="many files",
    )
    before = len(hub_server.request_log)
    entries = list(HfApi().list_repo_tree(hub_repo_id, "shards", expand=True))
    assert sorted(e.path for e in entries) == names
    assert {e.last_commit.oid for e in entries} == {info.oid}
    tree_requests = [r for r in hub_server.request_log[before:] if "/tree/" in r.path]
    assert len(tree_requests) == 2

    infos = HfApi().get_paths_info(hub_repo_id, ["shards", "shards/part-007.txt", "missing.txt"])
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFolder", "shards"),
        ("RepoFile", "shards/part-007.txt"),
    ]


def test_branches_and_tags_resolve_like_revisions(hub_server, hub_repo_id, tmp_path):
    api = HfApi()
    create_repo(hub_repo_id)
    api.create_branch(hub_repo_id, branch="dev")
    dev = upload_file(path_or_fileobj=b"on dev", path_in_repo="dev.txt", repo_id=hub_repo_id, revision="dev")
    api.create_tag(hub_repo_id, tag="v0.1", revision="dev")
    refs = api.list_repo_refs(hub_repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": model_info(hub_repo_id).sha, "dev": dev.oid}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v0.1", dev.oid)]
    path = hf_hub_download(hub_repo_id, "dev.txt", revision="v0.1", cache_dir=tmp_path)
    assert open(path, "rb").read() == b"on dev"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(hub_repo_id, "dev.txt", revision="main", cache_dir=tmp_path)
    api.delete_branch(hub_repo_id, branch="dev")
    with pytest.raises(RevisionNotFoundError):
        model_info(hub_repo_id, revision="dev")


def test_dataset_repos_are_served_under_their_url_prefix(hub_server, hub_repo_id, tmp_path):
    url = create_repo(hub_repo_id, repo_type="dataset")
    assert str(url) == f"{hub_server.endpoint}/datasets/{hub_repo_id}"
    upload_file(path_or_fileobj=b"x,y\n1,2\n", path_in_repo="data.csv", repo_id=hub_repo_id, repo_type="dataset")
    path = hf_hub_download(hub_repo_id, "data.csv", repo_type="dataset", cache_dir=tmp_path)
    assert open(path, "rb").read() == b"x,y\n1,2\n"
    with pytest.raises(RepositoryNotFoundError):
        model_info(hub_repo_id)  # same id, other repo type


# ---- downloads --------------------------------------------------------------------------------------------------


def test_hf_hub_download_and_snapshot_download_return_the_uploaded_bytes(hub_server, uploaded, tmp_path):
    repo_id, files, info = uploaded
    assert not (tmp_path / "cache").exists()
    for name, content in files.items():
        path = hf_hub_download(repo_id, name, cache_dir=tmp_path / "cache")
        assert open(path, "rb").read() == content
    snapshot = snapshot_download(repo_id, cache_dir=tmp_path / "snapshot-cache")
    assert os.path.basename(snapshot) == info.oid
    for name, content in files.items():
        assert open(os.path.join(snapshot, name), "rb").read() == content
    only_weights = snapshot_download(repo_id, cache_dir=tmp_path / "filtered", allow_patterns=["*.safetensors"])
    downloaded = [p.relative_to(only_weights).as_posix() for p in Path(only_weights).rglob("*") if p.is_file()]
    assert downloaded == ["weights/tiny.safetensors"]


def test_resolve_serves_lfs_headers_and_byte_ranges(hub_server, uploaded):
    repo_id, files, info = uploaded
    content = files["weights/tiny.safetensors"]
    path = f"/{repo_id}/resolve/main/weights/tiny.safetensors"
    status, headers, body = _raw_request(hub_server, "HEAD", path)
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == info.oid
    assert headers["X-Linked-Etag"].strip('"') == hashlib.sha256(content).hexdigest()
    assert int(headers["X-Linked-Size"]) == int(headers["Content-Length"]) == len(content)

    status, headers, body = _raw_request(hub_server, "GET", path, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, content[10:20], f"bytes 10-19/{len(content)}")
    status, _, body = _raw_request(hub_server, "GET", path, headers={"Range": "bytes=-5"})
    assert (status, body) == (206, content[-5:])
    assert _raw_request(hub_server, "GET", path, headers={"Range": f"bytes={len(content)}-"})[0] == 416


# ---- diffusers --------------------------------------------------------------------------------------------------


def _tiny_ddpm_pipeline():
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))


def test_pushed_ddpm_pipeline_loads_back_from_the_hub_with_the_same_weights(hub_server, hub_repo_id, tmp_path):
    import torch
    from diffusers import DiffusionPipeline

    pipe = _tiny_ddpm_pipeline()
    pipe.push_to_hub(hub_repo_id)
    assert hub_server.file_entry(hub_repo_id, "unet/diffusion_pytorch_model.safetensors").lfs_sha256 is not None
    assert hub_server.file_entry(hub_repo_id, "README.md") is not None  # diffusers' model card

    loaded = DiffusionPipeline.from_pretrained(hub_repo_id, cache_dir=tmp_path / "empty-cache")
    assert type(loaded).__name__ == "DDPMPipeline"
    expected, actual = pipe.unet.state_dict(), loaded.unet.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    public_config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == public_config


def test_custom_pipeline_and_component_code_is_downloaded_with_trust_remote_code(hub_server, hub_repo_id, tmp_path):
    """diffusers' custom-code layout: a pipeline module beside model_index.json and a component module in its folder."""
    from diffusers import DiffusionPipeline

    local = tmp_path / "pipeline"
    _tiny_ddpm_pipeline().save_pretrained(local)
    suffix = hub_repo_id.split("-")[-1]  # unique module names: diffusers caches remote modules by name
    pipeline_module, scheduler_module = f"pipeline_{suffix}", f"scheduling_{suffix}"
    (local / f"{pipeline_module}.py").write_text(
        "from diffusers import DDPMPipeline\n\n\nclass RemotePipeline(DDPMPipeline):\n    pass\n"
    )
    (local / "scheduler" / f"{scheduler_module}.py").write_text(
        "from diffusers import DDPMScheduler\n\n\nclass RemoteScheduler(DDPMScheduler):\n    pass\n"
    )
    index = json.loads((local / "model_index.json").read_text())
    index["_class_name"] = [pipeline_module, "RemotePipeline"]
    index["scheduler"] = [scheduler_module, "RemoteScheduler"]
    (local / "model_index.json").write_text(json.dumps(index))
    create_repo(hub_repo_id)
    upload_folder(repo_id=hub_repo_id, folder_path=local)

    before = len(hub_server.request_log)
    loaded = DiffusionPipeline.from_pretrained(hub_repo_id, cache_dir=tmp_path / "cache", trust_remote_code=True)
    assert type(loaded).__name__ == "RemotePipeline"
    assert type(loaded.scheduler).__name__ == "RemoteScheduler"
    fetched = {r.path.rsplit("/resolve/", 1)[-1] for r in hub_server.request_log[before:] if r.method == "GET"}
    assert {f"{pipeline_module}.py", f"scheduler/{scheduler_module}.py"} <= {p.split("/", 1)[1] for p in fetched}


# ---- the server itself ------------------------------------------------------------------------------------------


def test_server_binds_loopback_only_and_stop_closes_idle_connections():
    threads_before = set(threading.enumerate())
    reserved = hub_server_module.reserve_port()
    with pytest.raises(ConnectionRefusedError):  # bound but not listening: Hub calls fail fast before start()
        socket.create_connection(reserved.getsockname(), timeout=5)
    server = hub_server_module.HubServer(reserved).start()
    assert server.endpoint == f"http://127.0.0.1:{server.port}"
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.request("GET", "/api/whoami-v2", headers={"Authorization": "Bearer x"})
    response = idle.getresponse()
    assert response.status == 200 and json.loads(response.read())["name"] == server.user
    # `idle` stays open (keep-alive): stop() must still end its handler thread instead of waiting for a timeout.
    server.stop()
    assert set(threading.enumerate()) - threads_before == set()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    idle.close()

    wildcard = socket.socket()
    wildcard.bind(("0.0.0.0", 0))
    with pytest.raises(ValueError, match="127.0.0.1"):
        hub_server_module.HubServer(wildcard)
    wildcard.close()


def test_request_bodies_above_the_limit_are_refused_chunked_or_not():
    with hub_server_module.HubServer(max_body_bytes=1024) as server:
        status, _, _ = _raw_request(server, "POST", "/api/repos/create", b"{" + b" " * 2048 + b"}")
        assert status == 413
        assert _raw_request(server, "POST", "/api/repos/create", b'{"name": "ok"}')[0] == 200

        def chunked_create(chunks):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            headers = {"Authorization": "Bearer x", "Transfer-Encoding": "chunked"}
            conn.request("POST", "/api/repos/create", body=iter(chunks), headers=headers, encode_chunked=True)
            status = conn.getresponse().status
            conn.close()
            return status

        assert chunked_create([b'{"name": ', b'"chunked"}']) == 200
        assert chunked_create([b"{" + b" " * 600, b" " * 600 + b"}"]) == 413
        assert {r.path.rsplit("/", 1)[-1] for r in server.request_log} == {"create"}


def test_subprocesses_inherit_the_local_hub_environment(hub_server, hub_repo_id):
    create_repo(hub_repo_id)
    upload_file(path_or_fileobj=b"from the parent", path_in_repo="shared.txt", repo_id=hub_repo_id)
    code = (
        "import os, sys\n"
        "from huggingface_hub import constants, hf_hub_download\n"
        "path = hf_hub_download(sys.argv[1], 'shared.txt')\n"
        "print(constants.ENDPOINT, path.startswith(os.environ['HF_HOME']), open(path).read(), sep='|')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, hub_repo_id], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split("|") == [hub_server.endpoint, "True", "from the parent"]

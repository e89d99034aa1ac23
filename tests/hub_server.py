"""A small Hugging Face Hub on localhost, for the model pull tests and benchmark: the routes
huggingface_hub calls, answered as huggingface.co answers them.

- ``GET /api/models/ORG/NAME[/revision/REV]?blobs=true``: the repo's info and its files
  (``siblings``, with sizes, blob ids and LFS sha256), ``gated``;
- ``HEAD|GET /ORG/NAME/resolve/REV/PATH``: a small file itself (``ETag``: its git blob id); a
  large (LFS) file a 302 to the CDN with ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``;
  both with ``X-Repo-Commit``. A gated repo answers 401 without a token and 403 with one that
  has no access, a missing repo 401 and a missing file 404, with the Hub's ``X-Error-Code``;
- ``HEAD|GET /cdn/SHA256`` on ``localhost`` (another host name, as the real CDN is: the client
  stops following there and sends no token): the bytes, with ``Range`` requests answered 206.

Faults for tests: a connection cut once mid-file (optionally followed by an outage), a file
served corrupt once, a slow CDN. Every request is logged (method, path, Range header).

And the routes huggingface_hub's upload path takes (create_repo, then create_commit), for
``writers`` (token -> user name; the read tokens in ``tokens`` get role "read"):

- ``GET /api/whoami-v2``: the token's user and role, 401 for an unknown token;
- ``POST /api/repos/create``: a new (empty) repo in the user's namespace, 409 if it exists;
- ``POST /api/validate-yaml``: a README's front matter parsed as YAML (400 with the error);
- ``POST /api/models/ORG/NAME/preupload/REV``: each file's upload mode: "lfs" for binary
  content (a NUL in the sample), LFS suffixes and files over 10 MiB, else "regular";
- ``POST /ORG/NAME.git/info/lfs/objects/batch``: basic-transfer upload actions (none for an
  object the store holds), then ``PUT /lfs-upload/OID`` (the body's sha256 checked) and
  ``POST /lfs-verify``;
- ``POST /api/models/ORG/NAME/commit/REV``: the ndjson commit (base64 ``file`` lines and
  ``lfsFile`` lines naming uploaded objects) applied at once, as a new commit in ``commits``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".ckpt", ".pt", ".onnx", ".msgpack", ".h5")


@dataclass
class HubFile:
    path: str
    source: bytes | Path
    size: int
    git_sha1: str  # git's blob id of the content
    sha256: str
    lfs: bool

    @classmethod
    def of(cls, path: str, source: bytes | Path, lfs: bool | None = None) -> HubFile:
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        data_hash, git = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
        for block in [source] if isinstance(source, bytes) else _blocks(source):
            data_hash.update(block)
            git.update(block)
        if lfs is None:
            lfs = path.endswith(LFS_SUFFIXES) or size > 10 * 2**20
        return cls(path, source, size, git.hexdigest(), data_hash.hexdigest(), lfs)

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with open(self.source, "rb") as f:
            f.seek(start)
            return f.read(end - start)


def _blocks(path: Path):
    with open(path, "rb") as f:
        while block := f.read(8 * 2**20):
            yield block


@dataclass
class HubRepo:
    id: str
    files: dict[str, HubFile]
    gated: bool
    commit: str
    private: bool = False
    commits: list[dict] = field(default_factory=list)  # each commit made through the API: its message and paths


@dataclass
class Fault:
    cut_after: int | None = None  # bytes sent before the connection is cut (once)
    outage: bool = False  # after the cut, answer 503 until healed
    corrupt: bool = False  # the next GET gets one byte flipped


@dataclass
class LocalHub:
    """The server; ``with LocalHub() as hub:`` starts it, ``hub.endpoint`` is its HF_ENDPOINT."""
    repos: dict[str, HubRepo] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)  # tokens with access to the gated repos
    log: list[dict] = field(default_factory=list)
    faults: dict[str, Fault] = field(default_factory=dict)  # by sha256
    bytes_per_s: float | None = None  # the CDN's speed limit
    writers: dict[str, str] = field(default_factory=dict)  # write tokens -> their user's name
    lfs: dict[str, bytes] = field(default_factory=dict)  # uploaded LFS objects by sha256

    def add(self, repo: str, files: dict[str, bytes | Path], gated: bool = False) -> HubRepo:
        hub_files = {p: HubFile.of(p, src) for p, src in files.items()}
        commit = hashlib.sha1(json.dumps(sorted((p, f.sha256) for p, f in hub_files.items()))
                              .encode()).hexdigest()
        self.repos[repo] = HubRepo(repo, hub_files, gated, commit)
        return self.repos[repo]

    def file(self, repo: str, path: str) -> HubFile:
        return self.repos[repo].files[path]

    def cut(self, repo: str, path: str, after: int, outage: bool = False) -> None:
        self.faults[self.file(repo, path).sha256] = Fault(cut_after=after, outage=outage)

    def corrupt(self, repo: str, path: str) -> None:
        self.faults[self.file(repo, path).sha256] = Fault(corrupt=True)

    def heal(self) -> None:
        self.faults.clear()

    def writes(self) -> list[dict]:
        """The requests that change something (all but GET and HEAD)."""
        return [r for r in self.log if r["method"] not in ("GET", "HEAD")]

    def gets(self, repo: str, path: str) -> list[dict]:
        """The CDN GETs of a file, each with its Range header (None: the whole file)."""
        return [r for r in self.log if r["method"] == "GET"
                and r["path"] == f"/cdn/{self.file(repo, path).sha256}"]

    # -- the server ---------------------------------------------------------------------------
    def __enter__(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            pass
        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cdn_url(self, f: HubFile) -> str:
        return f"http://localhost:{self.port}/cdn/{f.sha256}"

    def resolve_url(self, repo: str, path: str) -> str:
        return f"{self.endpoint}/{repo}/resolve/main/{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: LocalHub

    def log_message(self, format: str, *args) -> None:  # quiet: the hub keeps its own log
        pass

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_POST(self) -> None:
        self._write_route()

    def do_PUT(self) -> None:
        self._write_route()

    def _logged_path(self) -> str:
        path = unquote(urlsplit(self.path).path)
        self.hub.log.append({"method": self.command, "path": path, "range": self.headers.get("Range"),
                             "auth": self.headers.get("Authorization")})
        return path

    def _route(self, body: bool) -> None:
        path = self._logged_path()
        parts = path.strip("/").split("/")
        if parts == ["api", "whoami-v2"]:
            self._whoami()
        elif parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._info("/".join(parts[2:4]))
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        elif len(parts) == 2 and parts[0] == "cdn":
            self._cdn(parts[1], body)
        else:
            self._error(404, "NotFound", "no such route")

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
        return repo

    def _info(self, repo_id: str) -> None:
        if (repo := self._repo(repo_id)) is None:
            return
        siblings = [{"rfilename": f.path, "size": f.size, "blobId": f.git_sha1,
                     **({"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {})}
                    for f in repo.files.values()]
        self._json({"id": repo.id, "modelId": repo.id, "sha": repo.commit, "private": repo.private,
                    "gated": "auto" if repo.gated else False, "disabled": False, "tags": [],
                    "siblings": siblings})

    def _resolve(self, repo_id: str, revision: str, path: str, body: bool) -> None:
        if (repo := self._repo(repo_id)) is None:
            return
        if repo.gated:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if not token:
                return self._error(401, "GatedRepo", f"Access to model {repo.id} is restricted. "
                                   "You must have access to it and be authenticated to access it.")
            if token not in self.hub.tokens:
                return self._error(403, "GatedRepo", f"Access to model {repo.id} is restricted "
                                   "and you are not in the authorized list.")
        f = repo.files.get(path)
        if f is None or revision not in ("main", repo.commit):
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes", "ETag": f'"{f.git_sha1}"'}
        if f.lfs:
            self.send_response(302)
            headers.update({"Location": self.hub.cdn_url(f), "X-Linked-Etag": f'"{f.sha256}"',
                            "X-Linked-Size": str(f.size), "Content-Length": "0"})
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self._bytes(f, 0, f.size, 200, headers, body)

    def _cdn(self, sha256: str, body: bool) -> None:
        f = next((f for r in self.hub.repos.values() for f in r.files.values() if f.sha256 == sha256),
                 None)
        if f is None:
            return self._error(404, "NotFound", "no such object")
        fault = self.hub.faults.get(sha256)
        if body and fault and fault.outage and fault.cut_after is None:
            return self._error(503, "ServiceUnavailable", "the CDN is down")
        start, end, status = 0, f.size, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes="):].partition("-")
            start, end, status = int(first), (int(last) + 1 if last else f.size), 206
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{f.sha256}"'}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        self._bytes(f, start, end, status, headers, body)

    def _bytes(self, f: HubFile, start: int, end: int, status: int, headers: dict, body: bool) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(end - start),
                     "Content-Type": "application/octet-stream"}.items():
            self.send_header(k, v)
        self.end_headers()
        if not body:
            return
        fault = self.hub.faults.get(f.sha256)
        limit = end
        if fault and fault.cut_after is not None:  # this GET is cut: once
            limit = min(end, start + fault.cut_after)
            fault.cut_after = None
            self.close_connection = True
            if not fault.outage:
                del self.hub.faults[f.sha256]
        if fault and fault.corrupt:
            del self.hub.faults[f.sha256]
            data = bytearray(f.read(start, end))
            data[len(data) // 2] ^= 0xFF
            self.wfile.write(bytes(data))
            return
        self._send(f, start, limit)

    def _send(self, f: HubFile, start: int, end: int) -> None:
        if self.hub.bytes_per_s is None:  # as fast as the kernel copies
            if isinstance(f.source, bytes):
                self.wfile.write(f.source[start:end])
            else:
                with open(f.source, "rb") as src:
                    self.connection.sendfile(src, start, end - start)
            return
        step = max(int(self.hub.bytes_per_s / 20), 1024)  # 20 pieces a second
        for pos in range(start, end, step):
            self.wfile.write(f.read(pos, min(pos + step, end)))
            time.sleep(step / self.hub.bytes_per_s)

    # -- uploads ---------------------------------------------------------------------------------
    def _write_route(self) -> None:
        path = self._logged_path()
        body = self._body()
        parts = path.strip("/").split("/")
        if parts == ["api", "repos", "create"]:
            self._create(json.loads(body))
        elif parts == ["api", "validate-yaml"]:
            self._validate_yaml(json.loads(body)["content"])
        elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] in ("preupload", "commit"):
            repo = self._writable("/".join(parts[2:4]))
            if repo is not None and parts[4] == "preupload":
                self._preupload(repo, json.loads(body)["files"])
            elif repo is not None:
                self._commit(repo, body)
        elif len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            if self._writable(f"{parts[0]}/{parts[1].removesuffix('.git')}") is not None:
                self._lfs_batch(json.loads(body))
        elif len(parts) == 2 and parts[0] == "lfs-upload" and self.command == "PUT":
            self._lfs_put(parts[1], body)
        elif parts == ["lfs-verify"]:
            oid = json.loads(body)["oid"]
            self._json({"success": True}) if oid in self.hub.lfs else self._error(404, "NotFound", "no such object")
        else:
            self._error(404, "NotFound", "no such route")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return bytes(data)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _user(self) -> str | None:
        """The writer the request's token belongs to (None: answered 401 already)."""
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token not in self.hub.writers:
            self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return None
        return self.hub.writers[token]

    def _whoami(self) -> None:
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token in self.hub.writers:
            name, role = self.hub.writers[token], "write"
        elif token in self.hub.tokens:
            name, role = "reader", "read"
        else:
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        self._json({"type": "user", "name": name, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}})

    def _writable(self, repo_id: str) -> HubRepo | None:
        """The repo, if the request's writer owns its namespace (else answered already)."""
        if (user := self._user()) is None:
            return None
        if repo_id.split("/")[0] != user:
            return self._error(403, "Forbidden", f"You don't have the rights to write to {repo_id}")
        if repo_id not in self.hub.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        return self.hub.repos[repo_id]

    def _create(self, request: dict) -> None:
        if (user := self._user()) is None:
            return
        repo_id = f"{request.get('organization') or user}/{request['name']}"
        if repo_id.split("/")[0] != user:
            return self._error(403, "Forbidden", f"You don't have the rights to create {repo_id}")
        if repo_id in self.hub.repos:
            return self._error(409, "Conflict", "You already created this model repo",
                               url=f"{self.hub.endpoint}/{repo_id}")
        private = request.get("visibility") == "private" or bool(request.get("private"))
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        self.hub.repos[repo_id] = HubRepo(repo_id, {}, False, commit, private=private)
        self._json({"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id, "id": commit})

    def _validate_yaml(self, content: str) -> None:
        import yaml

        front = content.split("---\n", 2)[1] if content.startswith("---\n") else ""
        try:
            if not isinstance(yaml.safe_load(front) or {}, dict):
                raise yaml.YAMLError("the metadata is not a mapping")
        except yaml.YAMLError as e:
            return self._json({"errors": [{"message": str(e)}], "warnings": []}, status=400)
        self._json({"errors": [], "warnings": []})

    def _preupload(self, repo: HubRepo, files: list[dict]) -> None:
        answer = []
        for f in files:
            binary = b"\0" in base64.b64decode(f["sample"])
            lfs = binary or f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10 * 2**20
            there = repo.files.get(f["path"])
            oid = None if there is None else there.sha256 if there.lfs else there.git_sha1
            answer.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                           "shouldIgnore": False, "oid": oid})
        self._json({"files": answer, "commitOid": repo.commit})

    def _lfs_batch(self, request: dict) -> None:
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs:
                entry["actions"] = {"upload": {"href": f"{self.hub.endpoint}/lfs-upload/{obj['oid']}"},
                                    "verify": {"href": f"{self.hub.endpoint}/lfs-verify"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "BadRequest", "the object's sha256 is not its oid")
        self.hub.lfs[oid] = body
        self._json({})

    def _commit(self, repo: HubRepo, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header, added = lines[0]["value"], {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                added[value["path"]] = HubFile.of(value["path"], base64.b64decode(value["content"]), lfs=False)
            elif line["key"] == "lfsFile" and value["oid"] in self.hub.lfs:
                added[value["path"]] = HubFile.of(value["path"], self.hub.lfs[value["oid"]], lfs=True)
            else:
                return self._error(422, "UnprocessableEntity", f"cannot commit {value.get('path')}: "
                                   "unknown operation or LFS object not uploaded")
        repo.files.update(added)
        repo.commit = hashlib.sha1(json.dumps([repo.commit, sorted((p, f.sha256) for p, f in added.items())])
                                   .encode()).hexdigest()
        repo.commits.append({"summary": header["summary"], "paths": sorted(added), "oid": repo.commit})
        self._json({"success": True, "commitOid": repo.commit,
                    "commitUrl": f"{self.hub.endpoint}/{repo.id}/commit/{repo.commit}"})

    def _json(self, data: dict, status: int = 200) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str, **more: str) -> None:
        raw = json.dumps({"error": message, **more}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


def main() -> None:
    """``python tests/hub_server.py REPO FOLDER``: serve FOLDER's files as the repo REPO until
    stdin closes, printing the endpoint first (the benchmark runs it as its own process, so
    the pull it measures shares no interpreter with the server)."""
    import sys

    repo, folder = sys.argv[1], Path(sys.argv[2])
    with LocalHub() as hub:
        hub.add(repo, {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
                       if p.is_file()})
        print(hub.endpoint, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()

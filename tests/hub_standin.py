"""A stand-in for the Hugging Face Hub's HTTP API, for `pull` tests (the Hub is unreachable here).

It answers only the routes huggingface_hub (>= 2.4) calls for a download, with the shapes the
real Hub returns (huggingface_hub's own `hf_api.py` `ModelInfo` / `RepoFile` parsers and
`file_download.py` `get_hf_file_metadata` read exactly these fields and headers):

- `GET /api/models/{repo}/revision/{rev}`: `{"id", "modelId", "sha", "private", "gated",
  "disabled", "siblings": [{"rfilename"}], "tags", ...}`;
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: `[{"type": "file", "oid", "size", "path",
  "lfs": {"oid", "size", "pointerSize"}}, {"type": "directory", ...}]`;
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: the bytes, with `X-Repo-Commit`, `ETag`
  (`X-Linked-Etag` / `X-Linked-Size` for LFS files) and `Range` support; a gated repo answers
  401 with `X-Error-Code: GatedRepo` unless the right bearer token is sent; an unknown repo
  answers 404 with `X-Error-Code: RepoNotFound`.

Files are served from memory; `delay_per_chunk_s` slows bodies so a test can interrupt a pull.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

CHUNK = 64 * 1024


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated_token: str | None = None  # when set, downloads need this bearer token
    # Files listed with this size but never served (a repository too big for the disk).
    listed_only: dict[str, int] = field(default_factory=dict)

    def is_lfs(self, path: str) -> bool:
        return len(self.files[path]) > 10_000


@dataclass
class HubStandin:
    repos: dict[str, Repo]
    delay_per_chunk_s: float = 0.0
    requests: list[tuple[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def do_HEAD(self) -> None:
                standin.handle(self, head=True)

            def do_GET(self) -> None:
                standin.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # --- routes ----------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append((request.command, path))
        if path.startswith("/api/models/"):
            self._api(request, path[len("/api/models/"):])
        elif "/resolve/" in path:
            self._resolve(request, path.lstrip("/"), head=head)
        else:
            self._send_json(request, 404, {"error": "Not Found"})

    def _find(self, rest: str, marker: str) -> tuple[str, Repo, str] | None:
        for repo_id, repo in self.repos.items():
            prefix = repo_id + marker
            if rest.startswith(prefix):
                return repo_id, repo, rest[len(prefix):]
        return None

    def _api(self, request: BaseHTTPRequestHandler, rest: str) -> None:
        found = self._find(rest, "/revision/") or self._find(rest, "/tree/")
        if found is None:
            self._not_found(request)
            return
        repo_id, repo, tail = found
        if "/tree/" in rest[len(repo_id):len(repo_id) + 6]:
            _, _, folder = tail.partition("/")
            entries: list[dict[str, object]] = []
            folders: set[str] = set()
            for name, data in sorted(repo.files.items()):
                if folder and not name.startswith(folder + "/"):
                    continue
                relative = name[len(folder) + 1:] if folder else name
                if "/" in relative:
                    folders.add((folder + "/" if folder else "") + relative.split("/", 1)[0])
                    continue
                entry: dict[str, object] = {
                    "type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                    "path": name,
                }
                if repo.is_lfs(name):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": 134}
                entries.append(entry)
            entries.extend(
                {"type": "file", "oid": "1" * 40, "size": size, "path": name,
                 "lfs": {"oid": "2" * 64, "size": size, "pointerSize": 134}}
                for name, size in sorted(repo.listed_only.items())
            )
            entries.extend({"type": "directory", "oid": "0" * 40, "size": 0, "path": name}
                           for name in sorted(folders))
            self._send_json(request, 200, entries)
            return
        self._send_json(request, 200, {
            "_id": "0" * 24, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": repo.commit, "lastModified": "2025-08-05T00:00:00.000Z", "private": False,
            "disabled": False, "gated": "manual" if repo.gated_token else False,
            "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers",
            "createdAt": "2025-08-05T00:00:00.000Z",
            "siblings": [{"rfilename": name} for name in sorted(repo.files)],
        })

    def _resolve(self, request: BaseHTTPRequestHandler, rest: str, *, head: bool) -> None:
        found = self._find(rest, "/resolve/")
        if found is None:
            self._not_found(request)
            return
        repo_id, repo, tail = found
        _, _, name = tail.partition("/")
        if repo.gated_token and request.headers.get("Authorization") != \
                f"Bearer {repo.gated_token}":
            body = json.dumps({"error": f"Access to model {repo_id} is restricted. You must have "
                               "access to it and be authenticated to access it. Please log in."})
            request.send_response(401)
            request.send_header("X-Error-Code", "GatedRepo")
            request.send_header("X-Error-Message", "Access to model is restricted")
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            if not head:
                request.wfile.write(body.encode())
            return
        if name not in repo.files:
            self._send_json(request, 404, {"error": "Entry not found"},
                            headers={"X-Error-Code": "EntryNotFound"})
            return
        data = repo.files[name]
        start = 0
        range_header = request.headers.get("Range")
        status = 200
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes="):].split("-", 1)[0] or 0)
            status = 206
        request.send_response(status)
        request.send_header("X-Repo-Commit", repo.commit)
        if repo.is_lfs(name):
            etag = hashlib.sha256(data).hexdigest()
            request.send_header("X-Linked-Etag", f'"{etag}"')
            request.send_header("X-Linked-Size", str(len(data)))
        else:
            etag = hashlib.sha1(data).hexdigest()
        request.send_header("ETag", f'"{etag}"')
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.end_headers()
        if head:
            return
        try:
            for offset in range(start, len(data), CHUNK):
                request.wfile.write(data[offset:offset + CHUNK])
                if self.delay_per_chunk_s:
                    time.sleep(self.delay_per_chunk_s)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _not_found(self, request: BaseHTTPRequestHandler) -> None:
        self._send_json(request, 404, {"error": "Repository not found"},
                        headers={"X-Error-Code": "RepoNotFound"})

    @staticmethod
    def _send_json(request: BaseHTTPRequestHandler, status: int, payload: object,
                   headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

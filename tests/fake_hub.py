"""An in-process fake of the Hugging Face Hub's HTTP API, served to huggingface_hub's real client through
`set_client_factory` + a `MockTransport` (see the `hub` fixture in conftest.py). No socket is opened."""

from __future__ import annotations

import base64
import hashlib
import json

try:
    import httpx2 as http  # the HTTP client of huggingface_hub >= 2
except ImportError:  # huggingface_hub 1.x (the GPU machines' stack) uses httpx, whose API is the same
    import httpx as http


class FakeHub:
    """Enough of the Hub's HTTP API for `hf_hub_download`, `create_repo`, `create_branch` and `upload_folder`.

    Repos are `{repo_id: {"branches": {name: commit}, "commits": {commit: {path: bytes}}}}`; every request is logged.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[http.Request] = []
        self.commits: list[list[dict]] = []  # the NDJSON lines of every commit received

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        self.repos[repo_id] = {"branches": {"main": commit}, "commits": {commit: dict(files)}}
        return commit

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of the requests that reached the Hub API, minus huggingface_hub's telemetry."""
        return [(r.method, r.url.path) for r in self.requests if r.url.path != "/api/agent-harnesses"]

    def __call__(self, request: http.Request) -> http.Response:
        self.requests.append(request)
        path = request.url.path
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            return self._create_repo(json.loads(request.content))
        if path == "/api/validate-yaml":
            return http.Response(200, json={"errors": [], "warnings": []})
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, action, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
            if repo_id not in self.repos:
                return http.Response(404, headers={"X-Error-Code": "RepoNotFound"})
            if action == "branch":
                return self._create_branch(repo_id, revision)
            if action == "preupload":
                files = json.loads(request.content)["files"]
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                return http.Response(200, json={"files": modes})
            if action == "commit":
                return self._commit(repo_id, revision, request.content)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(request.method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        return http.Response(404, json={"error": f"fake Hub does not serve {request.method} {path}"})

    def _create_repo(self, payload: dict) -> http.Response:
        repo_id = f"{payload['organization'] or 'user'}/{payload['name']}"
        if repo_id in self.repos:
            url = f"https://huggingface.co/{repo_id}"
            return http.Response(409, json={"error": "You already created this model repo", "url": url})
        self.add_repo(repo_id, {})
        self.repos[repo_id]["private"] = payload.get("visibility") == "private"
        return http.Response(200, json={"url": f"https://huggingface.co/{repo_id}", "name": repo_id})

    def _create_branch(self, repo_id: str, branch: str) -> http.Response:
        branches = self.repos[repo_id]["branches"]
        if branch in branches:
            return http.Response(409, json={"error": "Reference already exists"})
        branches[branch] = branches["main"]
        return http.Response(200, json={})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> http.Response:
        repo = self.repos[repo_id]
        lines = [json.loads(line) for line in body.decode().splitlines()]
        self.commits.append(lines)
        files = dict(repo["commits"][repo["branches"][revision]])
        for line in lines:
            if line["key"] == "file":
                assert line["value"]["encoding"] == "base64"
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        repo["commits"][commit] = files
        repo["branches"][revision] = commit
        url = f"https://huggingface.co/{repo_id}/commit/{commit}"
        return http.Response(200, json={"commitUrl": url, "commitOid": commit, "pullRequestUrl": None})

    def _resolve(self, method: str, repo_id: str, revision: str, filename: str) -> http.Response:
        repo = self.repos.get(repo_id)
        if repo is None:
            return http.Response(401, headers={"X-Error-Code": "RepoNotFound"})
        commit = repo["branches"].get(revision, revision if revision in repo["commits"] else None)
        if commit is None:
            return http.Response(404, headers={"X-Error-Code": "RevisionNotFound"})
        content = repo["commits"][commit].get(filename)
        if content is None:
            return http.Response(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
            "Content-Length": str(len(content)),
        }
        return http.Response(200, headers=headers, content=b"" if method == "HEAD" else content)


def mock_client(fake: FakeHub) -> http.Client:
    """A client for `huggingface_hub.set_client_factory` whose every request is answered by `fake`."""
    return http.Client(transport=http.MockTransport(fake))

"""A Hugging Face hub on loopback, for downloads in tests: GET/HEAD /{repo}/resolve/{revision}/{file} from a
folder per repository, with the headers huggingface_hub reads (a 404 says EntryNotFound)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loadtest.loopback import QuietHandler, loopback_server

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def fake_hub(repos: dict[str, dict[str, bytes]]) -> Iterator[tuple[str, list[str]]]:
    """(endpoint URL, the paths requested), serving repo id -> {file name: content}."""
    requested: list[str] = []

    class Handler(QuietHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            requested.append(self.path)
            repo, _, rest = self.path.lstrip("/").partition("/resolve/")
            name = rest.partition("/")[2]
            data = repos.get(repo, {}).get(name)
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    with loopback_server(Handler) as url:
        yield url, requested


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

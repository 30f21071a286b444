"""`dist-lacl push FOLDER REPO`: exactly the files export wrote, checked before anything is sent; refused in
one line offline or without a token; the upload itself against a fake Hub on 127.0.0.1."""

import base64
import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from helpers_launch import run

from dist_lacl.cli import main
from dist_lacl.export import save_dual_encoder
from dist_lacl.loading import load_dual_encoder

PUSH = [sys.executable, "-m", "dist_lacl.cli", "push"]


@pytest.fixture(scope="module")
def export(tiny_model_dir, tmp_path_factory):
    model, tokenizer = load_dual_encoder(tiny_model_dir)
    return save_dual_encoder(model, tokenizer, tmp_path_factory.mktemp("push") / "model")


def every_file(folder) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def test_dry_run_lists_exactly_the_exported_files(export, tmp_path, capsys):
    folder = shutil.copytree(export, tmp_path / "model")
    (folder / "notes.txt").write_text("the user's, not the export's")
    assert main(["push", str(folder), "me/lacl-tiny", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [(name, int(size.replace(",", ""))) for size, name in (line.split() for line in lines[:-1])]
    assert listed == every_file(export)  # sorted, relative, sizes; notes.txt stays home
    assert "README.md" in dict(listed) and "model.safetensors" in dict(listed)
    assert lines[-1] == f"would upload {len(listed)} files ({sum(s for _, s in listed):,d} bytes) to me/lacl-tiny"


@pytest.mark.parametrize("damage,message", [
    ("README.md", "no model card (README.md)"),
    ("model.safetensors", "model.safetensors is missing"),
    ("dist_lacl.json", "no dist_lacl.json; expected a model folder written by dist-lacl export"),
])
def test_an_incomplete_export_is_refused_before_anything(export, tmp_path, capsys, damage, message):
    folder = shutil.copytree(export, tmp_path / "model")
    if damage == "README.md":  # an export of an older version: no card, not listed
        settings = json.loads((folder / "dist_lacl.json").read_text())
        settings["written"].remove("README.md")
        (folder / "dist_lacl.json").write_text(json.dumps(settings))
    (folder / damage).unlink()
    assert main(["push", str(folder), "me/lacl-tiny", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_bad_repo_id_is_one_line(export, capsys):
    assert main(["push", str(export), "not a repo", "--dry-run"]) == 2
    assert "expected a Hub model id, owner/name" in capsys.readouterr().err


def test_offline_or_tokenless_push_is_refused_in_one_line(export, tmp_path):
    offline = run([*PUSH, str(export), "me/lacl-tiny"], expect_rc=2, HF_HOME=tmp_path, HF_TOKEN="hf_fake")
    assert offline.stderr.strip().count("\n") == 0 and "offline (HF_HUB_OFFLINE" in offline.stderr
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": tmp_path, "HF_TOKEN": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    tokenless = run([*PUSH, str(export), "me/lacl-tiny"], expect_rc=2, **env)
    assert tokenless.stderr.strip().count("\n") == 0 and "no Hugging Face token" in tokenless.stderr


class FakeHub(BaseHTTPRequestHandler):
    """The Hub's answers to what create_repo, create_branch and create_commit ask (files small enough to
    be committed inline, "regular" upload mode); records every request."""

    requests: list = []

    def log_message(self, *args):
        pass

    def _answer(self, body: dict, status: int = 200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, b""))
        self._answer({}, 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(("POST", self.path, body))
        endpoint = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._answer({"url": f"{endpoint}/{request['organization']}/{request['name']}"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._answer({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in files]})
        if "/branch/" in self.path:
            return self._answer({})
        if self.path == "/api/validate-yaml":  # the client asks before committing a README.md
            card = json.loads(body)["content"]
            valid = card.startswith("---\n") and isinstance(yaml.safe_load(card[4:].split("\n---\n")[0]), dict)
            return self._answer({} if valid else {"errors": [{"message": "bad YAML"}]}, 200 if valid else 400)
        if "/commit/" in self.path:
            return self._answer({"commitUrl": f"{endpoint}/me/lacl-tiny/commit/{'a' * 40}", "commitOid": "a" * 40})
        self._answer({}, 404)


@pytest.fixture
def fake_hub():
    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", FakeHub.requests
    server.shutdown()
    server.server_close()


def test_push_commits_exactly_the_exported_files_to_the_hub(export, tmp_path, fake_hub):
    endpoint, requests = fake_hub
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": tmp_path, "HF_TOKEN": "hf_fake", "HF_ENDPOINT": endpoint,
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    proc = run([*PUSH, str(export), "me/lacl-tiny", "--private", "--revision", "v1"], timeout=120, **env)
    assert "pushed" in proc.stdout and "/me/lacl-tiny/commit/" in proc.stdout
    posts = {path: body for method, path, body in requests if method == "POST"}
    created = json.loads(posts["/api/repos/create"])
    assert (created["organization"], created["name"], created["visibility"]) == ("me", "lacl-tiny", "private")
    assert "/api/models/me/lacl-tiny/branch/v1" in posts
    assert json.loads(posts["/api/validate-yaml"])["content"] == (export / "README.md").read_text()
    lines = [json.loads(line) for line in posts["/api/models/me/lacl-tiny/commit/v1"].splitlines()]
    sent = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines
            if line["key"] == "file"}
    assert sorted(sent) == [name for name, _ in every_file(export)]
    for name, content in sent.items():
        assert content == (export / name).read_bytes(), name


def test_an_unreachable_hub_is_one_line(export, tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": tmp_path, "HF_TOKEN": "hf_fake", "HF_ENDPOINT": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    proc = run([*PUSH, str(export), "me/lacl-tiny"], timeout=120, expect_rc=2, **env)
    assert proc.stderr.strip().count("\n") == 0 and "upload to me/lacl-tiny failed" in proc.stderr

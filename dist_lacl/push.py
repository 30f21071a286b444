"""`dist-lacl push FOLDER REPO`: upload an export to the Hugging Face Hub, exactly the files export wrote.

The folder is checked first (a complete export with its model card: every file its `dist_lacl.json`
lists, the weights of each tower); `--dry-run` then lists what would be sent and stops. Offline
(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set) or without a token, the push is refused in one line before
any request. The upload is one commit of those files (huggingface_hub's create_repo, then create_commit
with one addition per file, so nothing else in the folder travels).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from pathlib import Path

from .errors import UserError
from .loading import SETTINGS, WEIGHT_FILES
from .model_card import README
from .outputs import written_by_us

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def export_files(folder: str | Path) -> list[tuple[str, int]]:
    """[(path relative to `folder`, bytes)] of a complete export, sorted; UserError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; expected a model folder written by dist-lacl export")
    if not (folder / SETTINGS).is_file():
        raise UserError(f"{folder}: no {SETTINGS}; expected a model folder written by dist-lacl export")
    try:
        shared = json.loads((folder / SETTINGS).read_text(encoding="utf-8")).get("shared_encoder", True)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise UserError(f"{folder / SETTINGS}: unreadable; export the model again") from None
    written = written_by_us(folder, SETTINGS)
    missing = [name for name in written if not (folder / name).exists()]
    if missing:
        raise UserError(f"{folder}: {missing[0]} is missing (listed in {SETTINGS}); export the model again")
    if README not in written:
        raise UserError(f"{folder}: no model card ({README}); export the model again with this version of "
                        "dist-lacl to write one")
    for tower in [folder] if shared else [folder / "query", folder / "passage"]:
        if not any((tower / name).is_file() for name in WEIGHT_FILES):
            raise UserError(f"{tower}: no weights ({', '.join(WEIGHT_FILES)}); export the model again")
    files = []
    for name in written:
        path = folder / name
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                files.append((f.relative_to(folder).as_posix(), f.stat().st_size))
    return sorted(files)


def check_repo_id(repo: str) -> str:
    if not _REPO_ID.match(repo) or ".." in repo or repo.endswith(".git"):
        raise UserError(f"REPO {repo!r}: expected a Hub model id, owner/name (e.g. my-org/lacl-xlmr-base)")
    return repo


def check_can_upload() -> str:
    """The token to upload with; UserError (no request made) when offline or without one."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise UserError("offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); unset it to push, or pass "
                        "--dry-run to list what would be sent")
    token = get_token()
    if not token:
        raise UserError("no Hugging Face token; run `hf auth login` or set HF_TOKEN (a token with write access)")
    return token


def upload(folder: Path, files: list[tuple[str, int]], repo: str, token: str, private: bool,
           revision: str | None, message: str) -> str:
    """Create `repo` if needed (and the branch `revision`), commit `files`; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name, _ in files]
    commit = api.create_commit(repo, operations, commit_message=message, repo_type="model", revision=revision)
    return commit.commit_url


def run_push(args) -> None:
    folder = Path(args.folder)
    files = export_files(folder)
    repo = check_repo_id(args.repo)
    where = f"{repo}" + (f" (branch {args.revision})" if args.revision else "")
    if args.dry_run:
        for name, size in files:
            print(f"{size:>14,d}  {name}")
        print(f"would upload {len(files)} files ({sum(s for _, s in files):,d} bytes) to {where}")
        return
    token = check_can_upload()
    for client in ("httpx2", "httpx"):  # a line per request at INFO: noise around our one line
        logging.getLogger(client).setLevel(logging.WARNING)
    try:
        url = upload(folder, files, repo, token, args.private, args.revision, args.message)
    except _upload_errors() as e:
        raise UserError(f"upload to {where} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    print(f"pushed {len(files)} files to {where}: {url}")


def _upload_errors() -> tuple[type[Exception], ...]:
    """What a failed upload raises: the Hub's answers (HfHubHTTPError is an OSError; invalid card metadata a
    ValueError) and the HTTP client's transport errors (httpx2 in huggingface_hub 2.x, httpx before)."""
    errors: list[type[Exception]] = [OSError, ValueError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)

"""`ow files upload`: prints the file ID as its last line, exits non-zero on refusal."""

import json
import os
import subprocess
import sys
from pathlib import Path

OW = [str(Path(sys.executable).parent / "ow")]


def run_ow(*args):
    return subprocess.run([*OW, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=120)


def test_upload_prints_the_id_last_and_is_idempotent(prefect_server, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    first = run_ow("files", "upload", str(path), "--purpose", "conversations")
    assert first.returncode == 0, first.stderr
    file_id = first.stdout.strip().splitlines()[-1]
    assert file_id.startswith("conversations:file-") and len(file_id) == len("conversations:file-") + 64
    again = run_ow("files", "upload", str(path), "--purpose", "conversations")
    assert again.stdout.strip().splitlines()[-1] == file_id


def test_refused_upload_exits_non_zero_naming_file_and_line(prefect_server, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"messages": "not a list"}\n')
    result = run_ow("files", "upload", str(path), "--purpose", "conversations")
    assert result.returncode != 0
    assert "broken.jsonl, line 2: 'messages' must be a non-empty list of messages" in result.stderr
    assert "conversations:file-" not in result.stdout


def test_missing_file_and_missing_purpose(prefect_server, tmp_path):
    missing = run_ow("files", "upload", str(tmp_path / "nope.jsonl"), "--purpose", "conversations")
    assert missing.returncode == 1 and "no such file" in missing.stderr
    usage = run_ow("files", "upload", str(tmp_path / "nope.jsonl"))
    assert usage.returncode == 2 and "--purpose" in usage.stderr

"""`lora-lab sync`: datasets and LoRA files to and from an S3-compatible bucket (moto on 127.0.0.1,
IAM authentication on), and every refusal said before anything moves."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import bare_env, tree_digest
from safetensors.numpy import save_file

from lora_lab import Workspace
from lora_lab.bucket import parse_url, within
from lora_lab.datasets import Dataset
from lora_lab.errors import LoraLabError


def client(bucket):
    """A plain botocore client of the test bucket: another tool than lora_lab."""
    import botocore.session

    return botocore.session.Session().create_client(
        "s3", endpoint_url=bucket.endpoint, region_name="us-east-1",
        aws_access_key_id=bucket.key, aws_secret_access_key=bucket.secret)


def objects(bucket) -> dict[str, int]:
    """Every object under the bucket's prefix: key -> size."""
    prefix = bucket.url.split("/", 3)[3] + "/"
    found = client(bucket).list_objects_v2(Bucket=bucket.name, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: o["Size"] for o in found}


def run_json(cli, *argv) -> dict:
    return json.loads(cli(*argv, "--json")[1])


def user_files(root: Path) -> dict[str, str]:
    """A dataset's images and captions with their sha256 (its .lora_lab cache left out)."""
    return {k: v for k, v in tree_digest(root).items() if not k.startswith(".")}


def data_digest(root: Path) -> dict[str, str]:
    """Every file under root with its sha256, but the index (a cache that SQLite checkpoints)."""
    return {k: v for k, v in tree_digest(root).items() if "/.lora_lab/index.sqlite" not in k}


@pytest.fixture
def shapes(cli, ws, samples) -> Path:
    cli("dataset", "ingest", samples, "--name", "shapes")
    return ws.datasets / "shapes"


def test_dataset_push_sends_only_what_changed_and_pulls_into_a_fresh_workspace(cli, ws, shapes, bucket_env,
                                                                               tmp_path):
    before = tree_digest(shapes)
    first = run_json(cli, "sync", "push", "dataset", "shapes")
    assert first["sent"] == 13 and first["skipped"] == 0  # 8 images, 5 captions
    assert first["bytes"] == sum(p.stat().st_size for p in shapes.iterdir() if p.is_file())
    held = objects(bucket_env)
    assert {k for k in held if not k.startswith("datasets/shapes/.lora_lab/")} == {
        f"datasets/shapes/{f}" for f in user_files(shapes)}
    assert run_json(cli, "sync", "push", "dataset", "shapes")["sent"] == 0

    cli("dataset", "caption", "shapes", "red_circle.jpg", "a red circle, edited")
    again = run_json(cli, "sync", "push", "dataset", "shapes")
    assert again["files"] == ["red_circle.txt"] and again["skipped"] == 12
    after = tree_digest(shapes)
    assert {k: v for k, v in after.items() if k != "red_circle.txt" and not k.startswith(".")} == {
        k: v for k, v in before.items() if k != "red_circle.txt" and not k.startswith(".")}

    other = tmp_path / "other"
    pulled = run_json(cli, "--workspace", other, "sync", "pull", "dataset", "shapes")
    assert pulled["received"] == 13 and pulled["skipped"] == 0
    assert user_files(other / "datasets" / "shapes") == user_files(shapes)
    ds = Dataset.open("shapes", Workspace(other))
    rows = {r["file"]: r["caption"] for r in ds.images(limit=100).items}
    assert len(rows) == 8 and rows["red_circle.jpg"] == "a red circle, edited"
    assert rows["blue_square.png"] == "a blue square floating in a clear sky" and rows["white_circle.webp"] is None
    ds.index.close()
    assert run_json(cli, "--workspace", other, "sync", "pull", "dataset", "shapes")["received"] == 0


def test_a_pulled_dataset_trains(cli, shapes, bucket_env, tiny_models, tmp_path):
    from lora_lab.training.config import TrainConfig

    cli("sync", "push", "dataset", "shapes")
    other = tmp_path / "other"
    cli("--workspace", other, "sync", "pull", "dataset", "shapes")
    run = TrainConfig.from_dict({
        "model": {"base": str(tiny_models["sd15"])},
        "dataset": {"source": "shapes", "resolution": 64, "min_bucket": 64, "max_bucket": 128,
                    "trigger": "sks"},
        "train": {"max_steps": 2}}).write(tmp_path / "run.toml")
    done = run_json(cli, "--workspace", other, "train", run)
    assert done["steps"] == 2 and Path(done["output"]).is_file()


def test_pull_refuses_to_replace_a_locally_edited_caption_unless_forced(cli, shapes, bucket_env, tmp_path):
    cli("sync", "push", "dataset", "shapes")
    other = tmp_path / "other"
    cli("--workspace", other, "sync", "pull", "dataset", "shapes")
    cli("--workspace", other, "dataset", "caption", "shapes", "cyan_square.jpg", "my local edit")
    kept = data_digest(other)

    line = cli.fails("--workspace", other, "sync", "pull", "dataset", "shapes")
    assert "cyan_square.txt" in line and "--force" in line and "1 local file" in line
    assert data_digest(other) == kept

    forced = run_json(cli, "--workspace", other, "sync", "pull", "dataset", "shapes", "--force")
    assert forced["files"] == ["cyan_square.txt"] and forced["replaced"] == 1
    assert user_files(other / "datasets" / "shapes") == user_files(shapes)
    assert not list((other / "datasets" / "shapes").glob(".*.tmp"))


def test_lora_push_pull_and_listing(cli, ws, shapes, bucket_env, tmp_path):
    lora = tmp_path / "out" / "pets_v1.safetensors"
    lora.parent.mkdir()
    save_file({"lora_unet_x.lora_down.weight": np.arange(64, dtype=np.float32).reshape(4, 16)}, str(lora))
    assert run_json(cli, "sync", "push", "lora", lora)["sent"] == 1
    assert run_json(cli, "sync", "push", "lora", lora)["skipped"] == 1
    cli("sync", "push", "dataset", "shapes")

    other = tmp_path / "other"
    pulled = run_json(cli, "--workspace", other, "sync", "pull", "lora", "pets_v1.safetensors")
    assert pulled["received"] == 1 and Path(pulled["path"]).read_bytes() == lora.read_bytes()
    assert Path(pulled["path"]) == other / "loras" / "pets_v1.safetensors"

    listed = run_json(cli, "sync", "ls")
    assert listed["loras"] == [{"name": "pets_v1.safetensors", "bytes": lora.stat().st_size}]
    assert listed["datasets"] == [{"name": "shapes", "files": 13,
                                   "bytes": sum(p.stat().st_size for p in shapes.iterdir() if p.is_file())}]
    assert "pets_v1.safetensors" in cli("sync", "ls")[1]


def test_objects_changed_by_another_tool_are_noticed(cli, ws, bucket_env, tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file({"w": np.ones((8, 8), dtype=np.float32)}, str(lora))
    cli("sync", "push", "lora", lora)
    cli("sync", "pull", "lora", "style.safetensors")  # into ws/loras
    prefix = bucket_env.url.split("/", 3)[3]
    s3 = client(bucket_env)
    # the record lost: single-part ETags are MD5s, so an unchanged file is still recognised
    s3.delete_object(Bucket=bucket_env.name, Key=f"{prefix}/loras/.lora_lab/sync.json")
    assert run_json(cli, "sync", "push", "lora", lora)["skipped"] == 1
    # replaced behind lora_lab's back, same size: its ETag no longer matches the record's
    s3.put_object(Bucket=bucket_env.name, Key=f"{prefix}/loras/style.safetensors",
                  Body=lora.read_bytes()[:-1] + b"!")
    line = cli.fails("sync", "pull", "lora", "style.safetensors")
    assert "style.safetensors" in line and "--force" in line
    assert (ws.loras / "style.safetensors").read_bytes() == lora.read_bytes()
    assert run_json(cli, "sync", "push", "lora", lora)["sent"] == 1
    pulled = run_json(cli, "--workspace", tmp_path / "other", "sync", "pull", "lora", "style.safetensors")
    assert Path(pulled["path"]).read_bytes() == lora.read_bytes()


# -- refusals: one line each, nothing moved ----------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("change, said", [
    ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no credentials"),
    ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "refused the secret key"),
    ({"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"}, "does not know this access key"),
    ({"LORA_LAB_BUCKET": "s3://no-such-bucket/lab"}, "'no-such-bucket' does not exist"),
    ({"LORA_LAB_BUCKET_ENDPOINT": "http://127.0.0.1:{port}"}, "cannot reach the bucket endpoint"),
    ({"LORA_LAB_BUCKET": "http://lab-bucket/lab"}, "is not an s3:// URL"),
    ({"LORA_LAB_BUCKET": "s3://Lab_Bucket/lab"}, "is not a bucket name"),
    ({"LORA_LAB_BUCKET": "s3://lab-bucket/lab/../other"}, "'..' path segment"),
    ({"LORA_LAB_BUCKET": None}, "no bucket configured"),
])
def test_bad_bucket_settings_are_refused_before_anything_moves(cli, ws, shapes, bucket_env, monkeypatch,
                                                               change, said):
    bucket_env.env(monkeypatch, **{k: v and v.format(port=closed_port()) for k, v in change.items()})
    kept = data_digest(ws.root)
    for argv in (("push", "dataset", "shapes"), ("pull", "dataset", "shapes"), ("ls",)):
        assert said in cli.fails("sync", *argv)
    assert objects(bucket_env) == {} and data_digest(ws.root) == kept


def test_missing_names_are_refused(cli, ws, shapes, bucket_env, tmp_path):
    cli("sync", "push", "dataset", "shapes")
    held, kept = objects(bucket_env), data_digest(ws.root)
    assert "dataset 'nope' does not exist" in cli.fails("sync", "push", "dataset", "nope")
    assert "LoRA file" in cli.fails("sync", "push", "lora", tmp_path / "none.safetensors")
    assert "not a .safetensors file" in cli.fails("sync", "push", "lora", shapes / "red_circle.txt")
    assert "dataset 'nope' is not in the bucket" in cli.fails("sync", "pull", "dataset", "nope")
    assert "LoRA 'x.safetensors' is not in the bucket" in cli.fails("sync", "pull", "lora", "x.safetensors")
    assert "invalid LoRA name" in cli.fails("sync", "pull", "lora", "../x.safetensors")
    assert "invalid dataset name" in cli.fails("sync", "pull", "dataset", "../shapes")
    assert objects(bucket_env) == held and data_digest(ws.root) == kept
    assert sorted(p.name for p in ws.datasets.iterdir()) == ["shapes"]


def test_urls_outside_the_configured_prefix_are_refused():
    assert within("s3://lab-bucket/data/jobs/1", "s3://lab-bucket/data").prefix == "data/jobs/1"
    assert within("s3://lab-bucket/data", "s3://lab-bucket/data/").prefix == "data"
    assert within("s3://lab-bucket/any/where", "s3://lab-bucket").bucket == "lab-bucket"
    for outside in ("s3://other-bucket/data/jobs", "s3://lab-bucket/data-evil/jobs", "s3://lab-bucket/dat",
                    "s3://lab-bucket", "s3://lab-bucket/data/../secrets", "s3://lab-bucket/data//x"):
        with pytest.raises(LoraLabError, match="outside the configured bucket|path segment"):
            within(outside, "s3://lab-bucket/data")
    with pytest.raises(LoraLabError, match="not an s3:// URL"):
        within("file:///lab-bucket/data/x", "s3://lab-bucket/data")
    assert parse_url("s3://lab.c-d/x/y/").key("jobs", "1") == "x/y/jobs/1"


def test_without_s3fs_the_extra_is_named(bucket_env, ws, tmp_path):
    code = ("import sys\n"
            "import lora_lab, lora_lab.cli, lora_lab.bucket, lora_lab.sync\n"
            "assert 's3fs' not in sys.modules and 'botocore' not in sys.modules\n"
            "sys.modules['s3fs'] = None\n"
            "sys.exit(lora_lab.cli.main(['sync', 'push', 'dataset', 'shapes']))\n")
    env = bare_env(PATH="/usr/bin:/bin", HOME=str(tmp_path), LORA_LAB_HOME=str(ws.root),
                   LORA_LAB_BUCKET=bucket_env.url, LORA_LAB_BUCKET_ENDPOINT=bucket_env.endpoint,
                   AWS_ACCESS_KEY_ID=bucket_env.key, AWS_SECRET_ACCESS_KEY=bucket_env.secret)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "lora-lab: error: buckets need s3fs: pip install 'lora_lab[bucket]'"

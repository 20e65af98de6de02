"""Where a run's files go, checked on the driver before anything starts and on every worker.

- `resolve_run_dir`: `--out` (or the default `runs/<name>`) becomes an absolute path or stays a URI,
  on the driver, so that workers are told the same place whatever their working directory.
- `check_run_dir`: a clear error, before Ray starts, when `--out` is a file, cannot be written, or
  names an object store bucket that does not exist or cannot be reached.
- `write_marker` / `check_marker`: the driver writes `<run>/.editsweep-run` naming the run, and each
  worker checks at start that it reads the same marker. A worker on another node that sees a
  different (node-local) folder stops with a message instead of writing images nobody finds.
- `store_env`: the environment a worker needs to reach an object store (credentials, endpoint),
  which Ray does not pass on by itself; the runner hands it over as `runtime_env={"env_vars": ...}`.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone

import pyarrow.fs as pafs

from editsweep.bench.store import RunStore

MARKER = ".editsweep-run"

# Variables the object stores read (pyarrow's S3, GCS and Azure filesystems, and the AWS SDK).
STORE_ENV_PREFIXES = ("AWS_", "ARROW_S3_", "GOOGLE_", "GCS_", "AZURE_STORAGE_")
STORE_ENV_NAMES = ("STORAGE_EMULATOR_HOST", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE")


class RunDirError(RuntimeError):
    """The run directory cannot be used: the message says why and what to pass instead."""


def is_uri(run_dir: str) -> bool:
    """Whether `run_dir` names a remote filesystem (s3://, gs://, ...) rather than a local path."""
    return "://" in run_dir and not run_dir.startswith("file://")


def resolve_run_dir(run_dir: str | os.PathLike) -> str:
    """An absolute local path, or the URI as given (`file://` URIs are absolute by definition)."""
    text = str(run_dir)
    if "://" in text:
        return text.rstrip("/")
    return os.path.abspath(os.path.expanduser(text))


def check_run_dir(run_dir: str, create: bool) -> None:
    """Raise RunDirError unless the run directory can be written; `create` makes a local one.

    Without `create` (a dry run) nothing is written: a local path must be a folder or creatable
    below an existing folder, and an object store's bucket must exist and answer.
    """
    if is_uri(run_dir):
        _check_bucket(run_dir)
        return
    path = run_dir.removeprefix("file://")
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"--out {path} is a file, not a folder: pass a folder for the run (created if missing)")
    if not create:
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise RunDirError(f"--out {path} cannot be created: {parent} is not a writable folder")
        return
    probe = os.path.join(path, f".probe-{uuid.uuid4().hex}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as err:
        raise RunDirError(
            f"--out {path} is not writable ({err.strerror or err}): pass a folder this user can write"
        ) from None


def _check_bucket(uri: str) -> None:
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as err:
        raise RunDirError(f"--out {uri} is not a filesystem URI pyarrow can open: {err}") from None
    bucket = path.strip("/").split("/")[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    where = f" at {endpoint}" if endpoint else ""
    try:
        bucket_info = fs.get_file_info(bucket)
        target = fs.get_file_info(path)
    except OSError as err:
        raise RunDirError(
            f"cannot reach the object store of --out {uri}{where}: {err}. Check the credentials and endpoint "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, ...)"
        ) from None
    if bucket_info.type == pafs.FileType.NotFound:
        raise RunDirError(
            f"the bucket {bucket!r} of --out {uri} does not exist{where} (or these credentials cannot see it): "
            "create it first, or fix the URI"
        )
    if target.type == pafs.FileType.File:
        raise RunDirError(f"--out {uri} is an object (a file), not a folder: pass a prefix for the run")


def write_marker(store: RunStore, run_id: str) -> None:
    """Write `<run>/.editsweep-run` naming the run, for the workers' `check_marker`."""
    store.write_json(
        MARKER,
        dict(run_id=run_id, run_dir=store.uri, host=socket.gethostname(), written_at=datetime.now(timezone.utc)),
    )


def check_marker(store: RunStore, run_id: str, required: bool | None = None) -> None:
    """Raise RunDirError unless this process reads the marker the driver wrote for `run_id`.

    `required=None` checks only inside a Ray actor: a worker built in the driver's own process
    (tests, a notebook) sees the driver's filesystem by construction.
    """
    if required is None:
        required = _in_ray_actor()
    if not required:
        return
    marker, found = None, "is missing"
    try:
        marker = store.read_json(MARKER)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        if not _missing(store, MARKER):
            found = f"cannot be read ({err}; for an object store, are its credentials and endpoint set here?)"
    if isinstance(marker, dict) and marker.get("run_id") == run_id:
        return
    if isinstance(marker, dict):
        found = f"names run {marker.get('run_id')!r}"
    raise RunDirError(
        f"worker {socket.gethostname()}:{os.getpid()} does not see the driver's run directory {store.uri}: the run "
        f"marker {store.path(MARKER)} {found}, not run {run_id!r}. Every worker must reach the same run directory: "
        "use a filesystem shared by all nodes (the same absolute path everywhere) or an object store URI "
        "(s3://bucket/run) as --out."
    )


def store_env(run_dir: str) -> dict[str, str]:
    """The driver's variables an object store needs on the workers (none for a local run directory)."""
    if not is_uri(run_dir):
        return {}
    return {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES) or k in STORE_ENV_NAMES}


def _missing(store: RunStore, rel: str) -> bool:
    """Whether `rel` is known not to exist (False when the store cannot even be asked)."""
    try:
        return store.fs.get_file_info(store.path(rel)).type == pafs.FileType.NotFound
    except OSError:
        return False


def _in_ray_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None

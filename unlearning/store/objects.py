"""Object storage for the registry (``LETHE_REGISTRY_URL=s3://bucket/prefix``): any S3 API
through boto3, with the endpoint and credentials from boto3's standard variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``...).

Layout under the prefix::

    blobs/<sha256>                 a file's bytes, named by its checksum (so an upload that
                                   was cut off is simply done again, and files two folders
                                   share are stored once)
    <kind>/<name>/manifest.json    the folder: written last, so a folder is listed only once
                                   every file it names is stored
    <kind>/<name>/files/<path>     the files of a private folder (a job's uploads): its own,
                                   shared with no other folder, so that deleting it deletes
                                   its bytes too

A folder's manifest is written with ``If-None-Match: *`` when its name must be new: two
instances can never both create ``<model>-v<N>``."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from unlearning.errors import IntegrityError, LetheError
from unlearning.store.files import TMP_PREFIX

log = logging.getLogger("unlearning.store")

MANIFEST_NAME = "manifest.json"
PRIVATE_FILES = "files"


class StorageUnavailableError(LetheError):
    """The object storage cannot be reached (down, network, credentials): try again."""


class NameTakenError(LetheError):
    """A folder of that name was already published (by this or another instance)."""


class ObjectStore:
    """Folders of files in an S3 bucket (see the module's doc for the layout)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise LetheError(f"LETHE_REGISTRY_URL must look like s3://bucket/prefix, not {url!r}")
        self.url = url
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._client = None
        self._client_lock = threading.Lock()
        self._manifests: dict[str, tuple[str, str]] = {}  # key -> (etag, text): manifests read before

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.session.Session().client("s3", config=Config(
                    connect_timeout=3, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}))
            return self._client

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    @contextlib.contextmanager
    def _reaching(self, what: str):
        """botocore's failures as our errors: unreachable -> StorageUnavailableError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "RequestTimeout"):
                raise StorageUnavailableError(f"object storage {self.url}: {what} failed ({code}); try again") from None
            raise LetheError(f"object storage {self.url}: {what} failed ({code}: {exc})") from None
        except BotoCoreError as exc:  # no connection, timeouts, no credentials
            raise StorageUnavailableError(f"object storage {self.url} cannot be reached: {what} failed ({exc})") from None

    # -------------------------------------------------------------------------- writing

    def _file_key(self, rel: str, digest: str, private: tuple[str, str] | None) -> str:
        return self._key(*private, PRIVATE_FILES, rel) if private else self._key("blobs", digest)

    def upload_blobs(self, folder: Path, files: dict[str, str], *, private: tuple[str, str] | None = None) -> None:
        """Store every file of ``folder`` under its checksum (skipping those already there);
        those of a ``private`` folder ((kind, name)) under that folder instead."""
        from botocore.exceptions import ClientError

        for rel, digest in sorted(files.items()):
            key = self._file_key(rel, digest, private)
            with self._reaching(f"storing {rel}"):
                if private:
                    self.client.upload_file(str(folder / rel), self.bucket, key)
                    continue
                try:
                    self.client.head_object(Bucket=self.bucket, Key=key)
                    continue
                except ClientError as exc:
                    if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                        raise
                self.client.upload_file(str(folder / rel), self.bucket, key)

    def put_manifest(self, kind: str, name: str, text: str, *, exclusive: bool) -> None:
        """Publish a folder (its blobs are stored already). ``exclusive``: only if no folder
        of that name exists (NameTakenError otherwise)."""
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": "*"} if exclusive else {}
        with self._reaching(f"publishing {kind}/{name}"):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(kind, name, MANIFEST_NAME),
                                       Body=text.encode(), ContentType="application/json", **extra)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                    raise NameTakenError(f"{kind}/{name} already exists") from None
                raise

    # -------------------------------------------------------------------------- reading

    def manifests(self, kind: str) -> dict[str, str]:
        """name -> ETag of every published folder of ``kind``."""
        found: dict[str, str] = {}
        base = self._key(kind) + "/"
        with self._reaching(f"listing {kind}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    rest = item["Key"][len(base):]
                    name, _, leaf = rest.partition("/")
                    if leaf == MANIFEST_NAME and name:
                        found[name] = item.get("ETag", "")
        return found

    def manifest(self, kind: str, name: str, etag: str | None = None) -> str | None:
        """The text of a folder's manifest, None when no such folder was published. With
        the ``etag`` a listing gave, a manifest read before is not read again."""
        from botocore.exceptions import ClientError

        key = self._key(kind, name, MANIFEST_NAME)
        cached = self._manifests.get(key)
        if etag is not None and cached is not None and cached[0] == etag:
            return cached[1]
        with self._reaching(f"reading {kind}/{name}"):
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise
            text = reply["Body"].read().decode()
        self._manifests[key] = (reply.get("ETag", ""), text)
        return text

    def download(self, digest: str, target: Path, label: str, *, rel: str = "",
                 private: tuple[str, str] | None = None) -> None:
        """The blob ``digest`` (a ``private`` folder's file ``rel``) into ``target``, checked
        against its checksum."""
        tmp = target.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
        try:
            with self._reaching(f"reading {label}"):
                self.client.download_file(self.bucket, self._file_key(rel, digest, private), str(tmp))
            sha = hashlib.sha256()
            with open(tmp, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    sha.update(chunk)
            if sha.hexdigest() != digest:
                raise IntegrityError(f"{label}: checksum mismatch (the stored object changed or is corrupted)")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------------- deleting

    def ages(self, kind: str) -> dict[str, float]:
        """name -> seconds since its manifest was written, of every published folder of ``kind``."""
        found: dict[str, float] = {}
        base = self._key(kind) + "/"
        now = time.time()
        with self._reaching(f"listing {kind}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    name, _, leaf = item["Key"][len(base):].partition("/")
                    if leaf == MANIFEST_NAME and name:
                        found[name] = now - item["LastModified"].timestamp()
        return found

    def delete_folder(self, kind: str, name: str) -> bool:
        """Delete a private folder: its manifest first (so that no node lists or fetches it
        any more), then its files. True when there was one."""
        from botocore.exceptions import ClientError

        key = self._key(kind, name, MANIFEST_NAME)
        prefix = self._key(kind, name) + "/"
        with self._reaching(f"deleting {kind}/{name}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
                existed = True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                    raise
                existed = False
            self.client.delete_object(Bucket=self.bucket, Key=key)
            self._manifests.pop(key, None)
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        return existed

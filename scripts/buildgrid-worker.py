#!/usr/bin/env python3
"""A chroot worker for BuildGrid's Bots API, for the tests of bb-container-expander.

BuildGrid ships a scheduler but no worker, so scripts/buildgrid.sh starts this one with
the Python of BuildGrid's venv (it uses the generated protos of `buildgrid._protos`).
It runs an action the way bb_runner with `chrootIntoInputRoot` does, which is what
the actions bb-container-expander rewrites expect (docs/deployment.md):

  1. take a lease from BuildGrid (CreateBotSession, then UpdateBotSession long polls);
  2. write the action's input root (an image merged with the client's inputs) into a
     fresh directory: files 0555 or 0444, symlinks as they are;
  3. create the parents of the output paths, then run `/usr/bin/env -- ARGV` chrooted
     into that directory, in the Command's working directory, with only the Command's
     environment variables;
  4. upload outputs, stdout and stderr to the CAS and return the ActionResult in the
     lease (BuildGrid stores it in its Action Cache).

An input blob missing from the CAS fails the action with FAILED_PRECONDITION and a
PreconditionFailure naming the blob, as REAPI's Execute does, so that a client can
upload it again. chroot(2) needs root.

Every lease is logged on stderr; with --record FILE it is also appended to FILE as
one JSON object per line (what tests/buildgrid_e2e.rs checks).
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
from google.protobuf import timestamp_pb2

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as rex
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as rex_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from buildgrid._protos.google.rpc import code_pb2, error_details_pb2, status_pb2

# Blobs up to this size travel in Batch{Read,Update}Blobs, larger ones over ByteStream.
BATCH_BYTES = 2 << 20
STREAM_CHUNK = 1 << 20
# How long one UpdateBotSession may wait for work (BuildGrid answers after 80 % of it).
POLL_SECONDS = 30
RPC_SECONDS = 120
DEFAULT_ACTION_TIMEOUT = 600

LEASE_PENDING = bots_pb2.LeaseState.Value("PENDING")
LEASE_ACTIVE = bots_pb2.LeaseState.Value("ACTIVE")
LEASE_COMPLETED = bots_pb2.LeaseState.Value("COMPLETED")
LEASE_CANCELLED = bots_pb2.LeaseState.Value("CANCELLED")


# Run as `python -I -c CHROOT_EXEC ROOT WORKING_DIRECTORY ARGV...`: enters ROOT, then
# WORKING_DIRECTORY inside it, and execs /usr/bin/env -- ARGV with the environment given.
CHROOT_EXEC = (
    "import os, sys\n"
    "os.chroot(sys.argv[1])\n"
    "os.chdir(sys.argv[2])\n"
    "os.execv('/usr/bin/env', ['/usr/bin/env', '--', *sys.argv[3:]])\n"
)


def log(message):
    print(f"{time.strftime('%H:%M:%S')} worker: {message}", file=sys.stderr, flush=True)


def now():
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class ActionError(Exception):
    """Ends an action with a google.rpc.Status instead of an ActionResult."""

    def __init__(self, code, message, details=()):
        super().__init__(message)
        self.code = code
        self.details = list(details)

    def status(self):
        status = status_pb2.Status(code=self.code, message=str(self))
        for detail in self.details:
            status.details.add().Pack(detail)
        return status


def missing(digests, what):
    failure = error_details_pb2.PreconditionFailure()
    for digest in digests:
        failure.violations.add(type="MISSING", subject=f"blobs/{digest.hash}/{digest.size_bytes}")
    names = ", ".join(f"{d.hash}-{d.size_bytes}" for d in digests)
    return ActionError(code_pb2.FAILED_PRECONDITION, f"{what} missing from the CAS: {names}", [failure])


def digest_of(data):
    return rex.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key(digest):
    return (digest.hash, digest.size_bytes)


class Cas:
    """The few CAS calls a worker makes, on one instance, SHA-256 only."""

    def __init__(self, channel, instance):
        self.instance = instance
        self.cas = rex_grpc.ContentAddressableStorageStub(channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)

    def read(self, digests, what, deliver):
        """Calls deliver(digest, data) once per distinct digest, in batches."""
        distinct = {}
        for digest in digests:
            distinct.setdefault(key(digest), digest)
        batch, batch_bytes = [], 0
        for digest in distinct.values():
            if digest.size_bytes == 0:
                deliver(digest, b"")
            elif digest.size_bytes > BATCH_BYTES:
                deliver(digest, self._read_stream(digest, what))
            else:
                if batch and batch_bytes + digest.size_bytes > BATCH_BYTES:
                    self._read_batch(batch, what, deliver)
                    batch, batch_bytes = [], 0
                batch.append(digest)
                batch_bytes += digest.size_bytes
        if batch:
            self._read_batch(batch, what, deliver)

    def _read_batch(self, digests, what, deliver):
        response = self.cas.BatchReadBlobs(
            rex.BatchReadBlobsRequest(instance_name=self.instance, digests=digests), timeout=RPC_SECONDS
        )
        absent = []
        for blob in response.responses:
            if blob.status.code == code_pb2.NOT_FOUND:
                absent.append(blob.digest)
            elif blob.status.code != code_pb2.OK:
                raise ActionError(code_pb2.INTERNAL, f"Reading {what} {blob.digest.hash}: {blob.status.message}")
            else:
                deliver(blob.digest, self._verified(blob.digest, blob.data, what))
        if absent:
            raise missing(absent, what)

    def _read_stream(self, digest, what):
        name = f"{self.instance}/blobs/{digest.hash}/{digest.size_bytes}"
        try:
            chunks = self.bytestream.Read(bytestream_pb2.ReadRequest(resource_name=name), timeout=RPC_SECONDS)
            data = b"".join(chunk.data for chunk in chunks)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise missing([digest], what) from e
            raise
        return self._verified(digest, data, what)

    @staticmethod
    def _verified(digest, data, what):
        if key(digest_of(data)) != key(digest):
            raise ActionError(code_pb2.DATA_LOSS, f"{what} {digest.hash}-{digest.size_bytes} has other contents")
        return data

    def write(self, blobs):
        """Uploads the blobs (a dict from digest key to (Digest, bytes)) the CAS lacks."""
        if not blobs:
            return
        response = self.cas.FindMissingBlobs(
            rex.FindMissingBlobsRequest(instance_name=self.instance, blob_digests=[d for d, _ in blobs.values()]),
            timeout=RPC_SECONDS,
        )
        batch, batch_bytes = [], 0
        for digest in response.missing_blob_digests:
            _, data = blobs[key(digest)]
            if len(data) > BATCH_BYTES:
                self._write_stream(digest, data)
                continue
            if batch and batch_bytes + len(data) > BATCH_BYTES:
                self._write_batch(batch)
                batch, batch_bytes = [], 0
            batch.append(rex.BatchUpdateBlobsRequest.Request(digest=digest, data=data))
            batch_bytes += len(data)
        if batch:
            self._write_batch(batch)

    def _write_batch(self, requests):
        response = self.cas.BatchUpdateBlobs(
            rex.BatchUpdateBlobsRequest(instance_name=self.instance, requests=requests), timeout=RPC_SECONDS
        )
        for blob in response.responses:
            if blob.status.code != code_pb2.OK:
                raise ActionError(code_pb2.INTERNAL, f"Uploading {blob.digest.hash}: {blob.status.message}")

    def _write_stream(self, digest, data):
        name = f"{self.instance}/uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

        def requests():
            offset = 0
            while True:
                chunk = data[offset : offset + STREAM_CHUNK]
                last = offset + len(chunk) >= len(data)
                yield bytestream_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "", write_offset=offset, data=chunk, finish_write=last
                )
                offset += len(chunk)
                if last:
                    return

        self.bytestream.Write(requests(), timeout=RPC_SECONDS)


def child_path(parent, name, kind):
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ActionError(code_pb2.INVALID_ARGUMENT, f"{kind} {name!r} has an invalid name")
    return os.path.join(parent, name)


def relative_path(path, what):
    parts = path.split("/") if path else []
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ActionError(code_pb2.INVALID_ARGUMENT, f"Invalid {what} {path!r}")
    return path


def stage_input_root(cas, root_digest, root):
    """Writes the tree of root_digest into the empty directory root."""
    directories = {}
    level = [root_digest]
    while level:
        cas.read(level, "input directory", lambda d, data: directories.__setitem__(key(d), rex.Directory.FromString(data)))
        level = [n.digest for d in list(directories.values()) for n in d.directories if key(n.digest) not in directories]

    files = {}  # digest key -> (Digest, [(path, executable)])
    pending = [(root_digest, root)]
    while pending:
        digest, path = pending.pop()
        directory = directories[key(digest)]
        for node in directory.files:
            entry = files.setdefault(key(node.digest), (node.digest, []))
            entry[1].append((child_path(path, node.name, "File"), node.is_executable))
        for node in directory.symlinks:
            os.symlink(node.target, child_path(path, node.name, "Symlink"))
        for node in directory.directories:
            target = child_path(path, node.name, "Directory")
            os.mkdir(target)
            pending.append((node.digest, target))

    def write(digest, data):
        for path, executable in files[key(digest)][1]:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o555 if executable else 0o444)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)

    cas.read([digest for digest, _ in files.values()], "input file", write)


def directory_message(path, blobs):
    """The Directory of path (sorted, as REAPI requires) and the Directories under it."""
    directory, children = rex.Directory(), []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.islink(full):
            directory.symlinks.add(name=name, target=os.readlink(full))
        elif os.path.isdir(full):
            sub, sub_children = directory_message(full, blobs)
            data = sub.SerializeToString(deterministic=True)
            directory.directories.add(name=name, digest=digest_of(data))
            children.append(sub)
            children.extend(sub_children)
        else:
            directory.files.add(name=name, digest=store(blobs, read_file(full)), is_executable=os.access(full, os.X_OK))
    return directory, children


def read_file(path):
    with open(path, "rb") as file:
        return file.read()


def store(blobs, data):
    digest = digest_of(data)
    blobs[key(digest)] = (digest, data)
    return digest


class Worker:
    def __init__(self, args):
        self.args = args
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(args.server, options=options)
        self.bots = bots_pb2_grpc.BotsStub(self.channel)
        self.cas = Cas(self.channel, args.instance)
        self.name = args.name or f"chroot-worker-{socket.gethostname()}-{os.getpid()}"
        self.child = None
        os.makedirs(args.work_directory, exist_ok=True)

    def new_session(self):
        device = worker_pb2.Device(handle=self.name)
        for item in self.args.property:
            name, _, value = item.partition("=")
            device.properties.add(key=name, value=value)
        session = bots_pb2.BotSession(
            bot_id=self.name, status=bots_pb2.BotStatus.Value("OK"), worker=worker_pb2.Worker(devices=[device])
        )
        request = bots_pb2.CreateBotSessionRequest(parent=self.args.instance, bot_session=session)
        deadline = time.monotonic() + 60
        while True:
            try:
                # Like UpdateBotSession, this waits up to the deadline for a first lease.
                session = self.bots.CreateBotSession(request, timeout=POLL_SECONDS)
                log(f"session {session.name} on {self.args.server}, properties {self.args.property}")
                return session
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def serve(self):
        session = self.new_session()
        while True:
            for lease in list(session.leases):
                if lease.state == LEASE_CANCELLED:
                    session.leases.remove(lease)
                elif lease.state in (LEASE_PENDING, LEASE_ACTIVE):
                    self.complete(lease)
            try:
                session = self.bots.UpdateBotSession(
                    bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=POLL_SECONDS
                )
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    time.sleep(0.2)
                    continue
                log(f"session {session.name} lost ({e.code().name}: {e.details()}); starting another")
                session = self.new_session()

    def complete(self, lease):
        record = {"lease": lease.id, "instance": self.args.instance}
        try:
            result = self.execute(lease, record)
            lease.result.Pack(result)
            lease.status.CopyFrom(status_pb2.Status(code=code_pb2.OK))
            record["exit_code"] = result.exit_code
        except ActionError as e:
            lease.ClearField("result")
            lease.status.CopyFrom(e.status())
        except Exception as e:  # a bug or a local fault: BuildGrid retries INTERNAL
            lease.ClearField("result")
            lease.status.CopyFrom(status_pb2.Status(code=code_pb2.INTERNAL, message=f"worker: {e!r}"))
        lease.state = LEASE_COMPLETED
        record["status"] = code_pb2.Code.Name(lease.status.code)
        if lease.status.message:
            record["message"] = lease.status.message
        log(f"lease {lease.id}: {record['status']} exit={record.get('exit_code')} {lease.status.message}".rstrip())
        if self.args.record:
            with open(self.args.record, "a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def action_of(self, lease):
        if lease.payload.Is(rex.Action.DESCRIPTOR):
            action = rex.Action()
            lease.payload.Unpack(action)
            return action
        digest = rex.Digest()
        if not lease.payload.Unpack(digest):
            raise ActionError(code_pb2.INVALID_ARGUMENT, f"Lease payload {lease.payload.type_url} is no Action")
        found = []
        self.cas.read([digest], "Action", lambda _, data: found.append(rex.Action.FromString(data)))
        return found[0]

    def execute(self, lease, record):
        metadata = rex.ExecutedActionMetadata(worker=self.name)
        metadata.input_fetch_start_timestamp.CopyFrom(now())
        action = self.action_of(lease)
        commands = []
        self.cas.read([action.command_digest], "Command", lambda _, data: commands.append(rex.Command.FromString(data)))
        command = commands[0]
        platform = action.platform if action.HasField("platform") else command.platform
        record["platform"] = [[p.name, p.value] for p in platform.properties]
        record["argv"] = list(command.arguments)
        record["working_directory"] = command.working_directory
        if not command.arguments:
            raise ActionError(code_pb2.INVALID_ARGUMENT, "Command has no arguments")
        work = tempfile.mkdtemp(prefix="action-", dir=self.args.work_directory)
        try:
            root = os.path.join(work, "root")
            os.mkdir(root)
            stage_input_root(self.cas, action.input_root_digest, root)
            metadata.input_fetch_completed_timestamp.CopyFrom(now())
            record["input_root"] = sorted(os.listdir(root))
            log(
                f"lease {lease.id}: chroot {root} cwd=/{command.working_directory} "
                f"argv={list(command.arguments)} platform={record['platform']} input root={record['input_root']}"
            )
            return self.run(action, command, root, metadata)
        finally:
            # The staged files are read-only; their directories are not, so this works.
            shutil.rmtree(work, ignore_errors=True)

    def run(self, action, command, root, metadata):
        working_directory = relative_path(command.working_directory, "working directory")
        host_directory = os.path.join(root, working_directory)
        if command.output_paths:
            outputs = [(p, None) for p in command.output_paths]
        else:
            outputs = [(p, "file") for p in command.output_files] + [(p, "directory") for p in command.output_directories]
        for path, _ in outputs:
            parent = os.path.dirname(os.path.join(host_directory, relative_path(path, "output path")))
            os.makedirs(parent, exist_ok=True)
        timeout = action.timeout.seconds + action.timeout.nanos / 1e9 or DEFAULT_ACTION_TIMEOUT

        metadata.execution_start_timestamp.CopyFrom(now())
        # chroot(2) and chdir(2) happen in a fresh, single-threaded Python (CHROOT_EXEC),
        # which then execs /usr/bin/env in the new root. Not in a preexec_fn of this
        # process: it runs gRPC threads, and running Python code between fork and exec in
        # a multi-threaded process can deadlock or abort the child (seen as SIGABRT).
        self.child = subprocess.Popen(
            [sys.executable, "-I", "-c", CHROOT_EXEC, root, "/" + working_directory, *command.arguments],
            env={v.name: v.value for v in command.environment_variables},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = self.child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_child()
            raise ActionError(code_pb2.DEADLINE_EXCEEDED, f"Command did not finish within {timeout} s")
        finally:
            exit_code = self.child.wait()
            self.child = None
        metadata.execution_completed_timestamp.CopyFrom(now())
        if exit_code < 0:
            exit_code = 128 - exit_code

        metadata.output_upload_start_timestamp.CopyFrom(now())
        blobs = {}
        result = rex.ActionResult(exit_code=exit_code)
        result.stdout_digest.CopyFrom(store(blobs, stdout))
        result.stderr_digest.CopyFrom(store(blobs, stderr))
        for path, kind in outputs:
            full = os.path.join(host_directory, path)
            if os.path.islink(full):
                symlink = rex.OutputSymlink(path=path, target=os.readlink(full))
                result.output_symlinks.append(symlink)
                if kind == "file":
                    result.output_file_symlinks.append(symlink)
                elif kind == "directory":
                    result.output_directory_symlinks.append(symlink)
            elif os.path.isdir(full):
                directory, children = directory_message(full, blobs)
                tree = rex.Tree(root=directory, children=children)
                digest = store(blobs, tree.SerializeToString(deterministic=True))
                result.output_directories.add(path=path, tree_digest=digest)
            elif os.path.isfile(full):
                digest = store(blobs, read_file(full))
                result.output_files.add(path=path, digest=digest, is_executable=os.access(full, os.X_OK))
        self.cas.write(blobs)
        metadata.output_upload_completed_timestamp.CopyFrom(now())
        result.execution_metadata.CopyFrom(metadata)
        return result

    def kill_child(self):
        if self.child is not None:
            try:
                os.killpg(self.child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="BuildGrid's host:port")
    parser.add_argument("--instance", default="main", help="instance name of the leases and blobs")
    parser.add_argument("--work-directory", required=True, help="where input roots are staged")
    parser.add_argument("--property", action="append", default=[], help="NAME=VALUE the worker advertises")
    parser.add_argument("--record", help="append one JSON object per lease to this file")
    parser.add_argument("--name", help="bot id (default: chroot-worker-HOST-PID)")
    worker = Worker(parser.parse_args())

    def stop(signum, _frame):
        # Actions run in sessions of their own (so that a timeout kills all of an action):
        # take the running one along.
        worker.kill_child()
        log(f"stopping on signal {signum}")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.serve()


if __name__ == "__main__":
    main()

"""A client generated from proto/ by the standard protoc (grpcio-tools) calls
every RPC of every service on the real binary and gets UNIMPLEMENTED or a real
answer, never a crash; auth outcomes match the Rust tests.

Needs MERIDIAN_BIN (the built binary); .ci/run sets it.
"""

import importlib
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import grpc
import pytest
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
SERVICES = {
    "ingest": ["IngestService"],
    "identity": ["IdentityService"],
    "consent": ["ConsentService", "DsrService"],
    "audience": ["AudienceService"],
}


@pytest.fixture(scope="module")
def stubs():
    out = pathlib.Path(tempfile.mkdtemp(prefix="meridian-stubs-"))
    files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "meridian" / "v1").glob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    code = protoc.main(
        ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    assert code == 0, "protoc could not compile proto/"
    sys.path.insert(0, str(out))
    modules = {}
    for room in SERVICES:
        modules[room] = (
            importlib.import_module(f"meridian.v1.{room}_pb2"),
            importlib.import_module(f"meridian.v1.{room}_pb2_grpc"),
        )
    return modules


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("MERIDIAN_BIN")
    assert binary, "set MERIDIAN_BIN to the built meridian binary"
    data_dir = tempfile.mkdtemp(prefix="meridian-py-")
    env = {"PATH": os.environ.get("PATH", "")}

    def run(*args):
        return subprocess.run(
            [binary, "--data-dir", data_dir, *args], env=env, capture_output=True, text=True, check=True
        ).stdout

    keys = {
        "admin": run("keys", "create-api-key", "--workspace", "acme", "--scopes", "admin").strip(),
        "ingest": run("keys", "create-api-key", "--workspace", "acme", "--scopes", "ingest").strip(),
        "other": run("keys", "create-api-key", "--workspace", "globex", "--scopes", "admin").strip(),
    }
    process = subprocess.Popen(
        [binary, "--data-dir", data_dir, "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    address = None
    for line in process.stdout:
        match = re.match(r"grpc listening on (\S+)", line)
        if match:
            address = match.group(1)
            break
    assert address, "server did not print its gRPC address"
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    yield channel, keys
    channel.close()
    process.terminate()
    assert process.wait(timeout=30) == 0


def every_method(stubs):
    for room, services in SERVICES.items():
        pb2, pb2_grpc = stubs[room]
        for service in services:
            descriptor = pb2.DESCRIPTOR.services_by_name[service]
            for method in descriptor.methods:
                yield pb2_grpc, service, method, getattr(pb2, method.input_type.name)


def call(channel, pb2_grpc, service, method, request_type, key, **fields):
    stub = getattr(pb2_grpc, f"{service}Stub")(channel)
    metadata = [("authorization", f"Bearer {key}")] if key else []
    return getattr(stub, method.name)(request_type(**fields), metadata=metadata, timeout=10)


def test_every_rpc_answers_unimplemented_or_a_real_answer(stubs, server):
    channel, keys = server
    called = 0
    for pb2_grpc, service, method, request_type in every_method(stubs):
        try:
            call(channel, pb2_grpc, service, method, request_type, keys["admin"])
        except grpc.RpcError as error:
            assert error.code() in (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
            ), f"{service}/{method.name}: {error.code()} {error.details()}"
        called += 1
    assert called == 22


def test_auth_outcomes_through_the_generated_client(stubs, server):
    channel, keys = server
    pb2, pb2_grpc = stubs["consent"]
    method = pb2.DESCRIPTOR.services_by_name["ConsentService"].methods_by_name["VerifyLedger"]
    cases = [
        (None, "", grpc.StatusCode.UNAUTHENTICATED),
        ("mk_0000000000000000_" + "A" * 43, "", grpc.StatusCode.UNAUTHENTICATED),
        (keys["ingest"], "", grpc.StatusCode.PERMISSION_DENIED),
        (keys["other"], "acme", grpc.StatusCode.PERMISSION_DENIED),
    ]
    for key, workspace, expected in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, pb2_grpc, "ConsentService", method, pb2.VerifyLedgerRequest, key, workspace_id=workspace)
        assert caught.value.code() == expected, (workspace, caught.value.details())
    # The right key in its own workspace gets a real answer.
    answer = call(channel, pb2_grpc, "ConsentService", method, pb2.VerifyLedgerRequest, keys["admin"], workspace_id="acme")
    assert answer.valid

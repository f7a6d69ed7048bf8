"""The README's 5-minute tour (examples/tour.py) runs against the real binary and does
what it says: a stitched profile, a segment that counts the shopper, a completed access
request with her data, and a completed erasure with a signed receipt, after which the
profile is gone. Outcomes are checked through our own client, not only the tour's output.

Needs MERIDIAN_BIN (the built binary); .ci/run sets it.
"""

import importlib
import json
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
TOUR = ROOT / "examples" / "tour.py"


@pytest.fixture(scope="module")
def pb():
    proto = ROOT / "proto"
    out = pathlib.Path(tempfile.mkdtemp(prefix="meridian-tour-test-stubs-"))
    files = sorted(str(p.relative_to(proto)) for p in (proto / "meridian" / "v1").glob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    assert protoc.main(["protoc", f"-I{proto}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]) == 0
    sys.path.insert(0, str(out))
    names = ["common_pb2", "identity_pb2", "identity_pb2_grpc", "consent_pb2", "consent_pb2_grpc"]
    return {n: importlib.import_module(f"meridian.v1.{n}") for n in names}


@pytest.fixture(scope="module")
def server():
    """A fresh embedded `meridian serve` on free ports, with an admin key and an ingest-only
    write key, as a newcomer would set it up."""
    binary = os.environ.get("MERIDIAN_BIN")
    assert binary, "set MERIDIAN_BIN to the built meridian binary"
    data_dir = tempfile.mkdtemp(prefix="meridian-tour-")
    # Embedded on purpose: no DATABASE_URL or NATS_URL reaches the server.
    env = {"PATH": os.environ.get("PATH", "")}

    def create_key(scopes):
        return subprocess.run(
            [binary, "--data-dir", data_dir, "keys", "create-api-key", "--workspace", "acme",
             "--scopes", scopes, "--region", "eu", "--time-zone", "Europe/Paris"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()

    keys = {"admin": create_key("admin"), "ingest": create_key("ingest")}
    log = open(pathlib.Path(data_dir) / "server.log", "w")
    process = subprocess.Popen(
        [binary, "--data-dir", data_dir, "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    addresses = {}
    for line in process.stdout:
        match = re.match(r"(grpc|http) listening on (\S+)", line)
        if match:
            addresses[match.group(1)] = match.group(2)
        if len(addresses) == 2:
            break
    assert set(addresses) == {"grpc", "http"}, f"server did not print both addresses; see {log.name}"
    channel = grpc.insecure_channel(addresses["grpc"])
    grpc.channel_ready_future(channel).result(timeout=30)
    yield addresses, keys, channel
    channel.close()
    process.terminate()
    assert process.wait(timeout=30) == 0
    log.close()


def run_tour(addresses, api_key, write_key):
    env = dict(os.environ, MERIDIAN_GRPC=addresses["grpc"], MERIDIAN_HTTP=addresses["http"],
               MERIDIAN_API_KEY=api_key, MERIDIAN_WRITE_KEY=write_key)
    return subprocess.run([sys.executable, str(TOUR), "--timeout", "30"], env=env,
                          capture_output=True, text=True, timeout=180)


def printed(pattern, output):
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"the tour did not print {pattern!r}:\n{output}"
    return match.groups()


def test_the_tour_runs_and_its_outcomes_hold(server, pb):
    addresses, keys, channel = server
    tour = run_tour(addresses, keys["admin"], keys["ingest"])
    assert tour.returncode == 0, tour.stdout + tour.stderr
    out = tour.stdout
    assert "Tour complete." in out

    # Consent: two explicit choices, both given, and the ledger verifies.
    assert printed(r"^   marketing\.advertising\.third_party\.targeted: (\S+) until", out) == ("CONSENT_DECISION_GIVEN",)
    assert printed(r"^   analytics\.reporting: (\S+) until", out) == ("CONSENT_DECISION_GIVEN",)
    # Three events over gRPC and one over HTTP, all accepted, all on one stitched profile.
    assert out.count("EVENT_OUTCOME_ACCEPTED") == 3
    assert '"accepted": 1' in printed(r"^   HTTP (200: .*)$", out)[0]
    (email,) = printed(r"^Shopper: (\S+),", out)
    (profile_id,) = printed(r"^   found profile: (\S+)$", out)
    (events,) = printed(r"^     events: (.*)$", out)
    assert sorted(events.split(", ")) == ["Home", "Order Completed", "Product Added", "Product Viewed"]
    assert printed(r"^   link \((\w+)\)", out) == ("same_event",)
    # The segment counts the shopper on the embedded store's read model.
    assert printed(r"^   ListMembers: (\S+) \(EU-FR\) joined", out) == (profile_id,)
    (count,) = printed(r"^   PreviewSegment: (\d+) member\(s\)", out)
    assert int(count) >= 1
    assert printed(r"^     sample: (\S+) \(EU-FR\)$", out) == (profile_id,)

    # Checked through our own client: both requests completed, with what the tour printed.
    common, consent = pb["common_pb2"], pb["consent_pb2"]
    auth = [("authorization", f"Bearer {keys['admin']}")]
    dsr = pb["consent_pb2_grpc"].DsrServiceStub(channel)
    (access_id,) = printed(r"^9\..*\n   request: (\S+),", out)
    access = dsr.GetRequest(consent.GetRequestRequest(request_id=access_id), metadata=auth).request
    assert access.kind == consent.REQUEST_KIND_ACCESS
    assert access.status == consent.REQUEST_STATUS_COMPLETED
    assert access.regime == "gdpr"
    # The tour read the bundle before the erasure: her profile, both identifiers, 4 events.
    assert printed(r"^     profile: (\d+) item", out) == ("1",)
    assert printed(r"^     identifiers: (\d+) item", out) == ("2",)
    assert printed(r"^     events: (\d+) item", out) == ("4",)
    # The stored bundle is personal data too: the erasure emptied it.
    bundle = json.loads(access.access_bundle_json)
    assert bundle.get("erased") is True and "profile" not in bundle, bundle

    (erasure_id,) = printed(r"^10\..*\n   request: (\S+)$", out)
    erasure = dsr.GetRequest(consent.GetRequestRequest(request_id=erasure_id), metadata=auth).request
    assert erasure.kind == consent.REQUEST_KIND_ERASURE
    assert erasure.status == consent.REQUEST_STATUS_COMPLETED
    assert erasure.receipt_signature and erasure.receipt_signature in out
    receipt = json.loads(erasure.receipt_json)
    assert receipt["request_id"] == erasure_id
    steps = [s["name"] for s in receipt["steps"]]
    assert {"delete_identity_graph", "delete_events", "crypto_shred"} <= set(steps), steps

    # After the erasure the profile is gone and the ledger still verifies.
    identity = pb["identity_pb2_grpc"].IdentityServiceStub(channel)
    with pytest.raises(grpc.RpcError) as gone:
        identity.GetProfile(pb["identity_pb2"].GetProfileRequest(profile_id=profile_id), metadata=auth)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as gone:
        identity.LookupProfile(pb["identity_pb2"].LookupProfileRequest(
            identifier=common.Identifier(type=common.IDENTIFIER_TYPE_EMAIL, value=email)), metadata=auth)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    ledger = pb["consent_pb2_grpc"].ConsentServiceStub(channel).VerifyLedger(consent.VerifyLedgerRequest(), metadata=auth)
    assert ledger.valid and ledger.entries_checked >= 2


def test_the_tour_runs_again_on_the_same_server(server):
    # Each run is a fresh shopper, so a newcomer can run it twice.
    addresses, keys, _ = server
    again = run_tour(addresses, keys["admin"], keys["admin"])
    assert again.returncode == 0, again.stdout + again.stderr


def test_the_tour_names_the_failure_with_a_wrong_key(server):
    addresses, keys, _ = server
    tour = run_tour(addresses, "mk_0000000000000000_" + "A" * 43, keys["ingest"])
    assert tour.returncode != 0
    assert "UNAUTHENTICATED" in tour.stderr, tour.stderr
    # And an ingest-only key cannot read consent: the first step fails, naming why.
    tour = run_tour(addresses, keys["ingest"], keys["ingest"])
    assert tour.returncode != 0
    assert "PERMISSION_DENIED" in tour.stderr, tour.stderr

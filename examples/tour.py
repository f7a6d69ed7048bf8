#!/usr/bin/env python3
"""A 5-minute tour of Meridian with a gRPC client generated from proto/.

One French shopper, Chloé, goes through the whole product against a running
`meridian serve`: consent, events over gRPC and over the Segment-compatible
HTTP API, identity stitching and its explanation, an audience, the consent
ledger, an access request and an erasure request with its signed receipt.

Needs Python 3.9+ with `grpcio` and `grpcio-tools` (tests/python/requirements.txt).

    KEY=$(meridian keys create-api-key --workspace acme --scopes admin \\
            --region eu --time-zone Europe/Paris)
    meridian serve &          # prints "grpc listening on …" and "http listening on …"
    python3 examples/tour.py --api-key "$KEY"

Settings, as flags or environment: --grpc (MERIDIAN_GRPC, default
127.0.0.1:50051), --http (MERIDIAN_HTTP, default 127.0.0.1:8080), --api-key
(MERIDIAN_API_KEY: a key with the admin scope, because profiles are read through
IdentityService), --write-key (MERIDIAN_WRITE_KEY: the storefront's key for the
HTTP API, at least the ingest scope; defaults to --api-key).

Every run uses a fresh shopper, so the tour can run again on the same server.
It exits non-zero, naming the step, if the platform does not do what it shows.
"""

import argparse
import base64
import importlib
import json
import os
import pathlib
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETED_ADS = "marketing.advertising.third_party.targeted"  # fideslang data use
ANALYTICS = "analytics.reporting"


def generate_stubs():
    """Compiles proto/ with the standard protoc into a scratch directory and imports it.

    Nothing is checked in: the contract in proto/ is the only source of truth.
    """
    proto = ROOT / "proto"
    out = pathlib.Path(tempfile.mkdtemp(prefix="meridian-tour-stubs-"))
    files = sorted(str(p.relative_to(proto)) for p in (proto / "meridian" / "v1").glob("*.proto"))
    well_known = str(pathlib.Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    args = ["protoc", f"-I{proto}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + files) != 0:
        sys.exit("protoc could not compile proto/")
    sys.path.insert(0, str(out))
    return {
        name: importlib.import_module(f"meridian.v1.{name}")
        for name in ["common_pb2", "ingest_pb2", "ingest_pb2_grpc", "identity_pb2", "identity_pb2_grpc",
                     "consent_pb2", "consent_pb2_grpc", "audience_pb2", "audience_pb2_grpc"]
    }


def step(number, title):
    print(f"\n{number}. {title}")


def show(label, value):
    print(f"   {label}: {value}")


def wait_for(what, probe, timeout, interval=0.2):
    """Polls probe() until it returns something truthy; the platform does some work
    asynchronously (stitching, the audience read model, the erasure saga)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(interval)


def tour(args, pb):
    c, ingest, identity, consent, audience = (
        pb["common_pb2"], pb["ingest_pb2"], pb["identity_pb2"], pb["consent_pb2"], pb["audience_pb2"])
    channel = grpc.insecure_channel(args.grpc)
    grpc.channel_ready_future(channel).result(timeout=args.timeout)
    # Every RPC carries the API key; an empty workspace_id means the key's own workspace.
    auth = [("authorization", f"Bearer {args.api_key}")]
    ingest_api = pb["ingest_pb2_grpc"].IngestServiceStub(channel)
    identity_api = pb["identity_pb2_grpc"].IdentityServiceStub(channel)
    consent_api = pb["consent_pb2_grpc"].ConsentServiceStub(channel)
    dsr_api = pb["consent_pb2_grpc"].DsrServiceStub(channel)
    audience_api = pb["audience_pb2_grpc"].AudienceServiceStub(channel)

    run = uuid.uuid4().hex[:8]
    email = c.Identifier(type=c.IDENTIFIER_TYPE_EMAIL, value=f"Chloe.Martin+{run}@example.fr")
    browser = c.Identifier(type=c.IDENTIFIER_TYPE_ANONYMOUS_ID, value=str(uuid.uuid4()))
    shopper = c.SubjectRef(identifiers=[email, browser])
    print(f"Meridian tour on {args.grpc} (gRPC) and {args.http} (HTTP)")
    print(f"Shopper: {email.value}, browser {browser.value}, in France (EU-FR)")

    step(1, "ConsentService.RecordConsent: the cookie banner's explicit choices")
    given = lambda purpose: c.PurposeChoice(
        purpose=purpose, decision=c.CONSENT_DECISION_GIVEN, lawful_basis=c.LAWFUL_BASIS_CONSENT)
    recorded = consent_api.RecordConsent(consent.RecordConsentRequest(
        subject=shopper,
        jurisdiction="EU-FR",
        signals=c.ConsentSignals(choices=[given(TARGETED_ADS), given(ANALYTICS)]),
        notice=consent.Notice(url="https://shop.example/privacy", version="2026-11", language="fr-FR"),
        collection_point="cookie-banner",
        actor=consent.ACTOR_SUBJECT,
        time_zone="Europe/Paris",
        # A retry with the same key appends nothing: safe to resend after a timeout.
        idempotency_key=f"tour-consent-{run}",
    ), metadata=auth)
    for entry in recorded.entries:
        choice = entry.purposes[0]
        show(f"ledger entry #{entry.sequence}",
             f"{choice.purpose} {c.ConsentDecision.Name(choice.decision)} (hash {entry.hash[:12]}…)")
    show("signed", "the last entry of the batch; its signature covers the chain before it")

    step(2, "IngestService.Ingest: a page view, a cart and an order")
    def event(kind, suffix, **fields):
        e = ingest.Event(message_id=f"tour-{run}-{suffix}", type=kind, anonymous_id=browser.value,
                         jurisdiction="EU-FR", **fields)
        e.timestamp.GetCurrentTime()
        return e

    batch = [
        event(ingest.EVENT_TYPE_PAGE, "page", name="Home"),
        event(ingest.EVENT_TYPE_TRACK, "cart", event="Product Added",
              properties={"product_id": "silk-scarf", "price": 89.0, "currency": "EUR"}),
        # At checkout the shopper types her email: the event carries both identifiers,
        # which is what lets identity stitching join the browser to the email.
        event(ingest.EVENT_TYPE_TRACK, "order", event="Order Completed", identifiers=[email],
              properties={"order_id": f"o-{run}", "revenue": 89.0, "currency": "EUR"}),
    ]
    answer = ingest_api.Ingest(ingest.IngestRequest(events=batch), metadata=auth)
    for result in answer.results:
        show(result.message_id, ingest.EventOutcome.Name(result.outcome) + (f" ({result.reason})" if result.reason else ""))
    if answer.summary.accepted != len(batch):
        raise RuntimeError(f"Ingest accepted {answer.summary.accepted} of {len(batch)} events")

    step(3, "POST /v1/track: the Segment-compatible HTTP API (write key as the Basic username)")
    body = {
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": browser.value,
        "jurisdiction": "EU-FR",  # Meridian's extension to Segment's spec
        "properties": {"product_id": "wool-coat", "price": 399.0, "currency": "EUR"},
    }
    basic = base64.b64encode(f"{args.write_key}:".encode()).decode()
    request = urllib.request.Request(
        f"http://{args.http}/v1/track", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {basic}"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, reply = response.status, json.load(response)
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"POST /v1/track answered {error.code}: {error.read().decode()}") from None
    show(f"HTTP {status}", json.dumps(reply["summary"]))
    http_message_id = reply["results"][0]["messageId"]

    step(4, "IdentityService.LookupProfile: wait for identity stitching")

    def stitched():
        # The identity room reads accepted events from the bus, so the profile shows up
        # a moment after Ingest answers: NOT_FOUND until then.
        try:
            profile = identity_api.LookupProfile(
                identity.LookupProfileRequest(identifier=email), metadata=auth).profile
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return profile if len(profile.identifiers) >= 2 else None

    profile = wait_for("stitching the email to the browser", stitched, args.timeout)
    show("found profile", profile.profile_id)
    for identifier in profile.identifiers:
        show("  identifier", f"{c.IdentifierType.Name(identifier.type)} {identifier.value}")
    traits = profile.computed_traits
    show("  computed", f"AIPL {identity.AiplStage.Name(traits.aipl_stage)}, {traits.rfm.orders} order(s), "
                       f"{traits.rfm.monetary_minor_units / 100:.2f} {traits.rfm.currency}")

    def all_events():
        # The HTTP event carried only the browser id; it lands on the same profile.
        listed = identity_api.ListProfileEvents(
            identity.ListProfileEventsRequest(profile_id=profile.profile_id), metadata=auth).events
        return listed if any(e.message_id == http_message_id for e in listed) else None

    events = wait_for("the HTTP event joining the profile", all_events, args.timeout)
    show("  events", ", ".join(e.event or e.name for e in events))

    step(5, "IdentityService.ExplainProfile: why these identifiers are one person")
    explained = identity_api.ExplainProfile(
        identity.ExplainProfileRequest(profile_id=profile.profile_id), metadata=auth)
    for edge in explained.edges:
        show(f"link ({edge.rule})", edge.reason)
    for conflict in explained.conflicts:
        show(f"refused ({conflict.rule})", conflict.reason)

    step(6, "AudienceService.CreateSegment, ListMembers, PreviewSegment")
    # The rule language is documented in services/audience/src/segment.rs. Consent is not
    # part of the rule: it is checked per member, for the segment's purpose, at send time.
    definition = {"all": [
        {"event": {"name": "Product Added", "within_days": 7}},
        {"spend": {"currency": "EUR", "at_least": "50.00", "within_days": 30}},
        {"has_identifier": "email"},
    ]}
    segment = audience_api.CreateSegment(audience.CreateSegmentRequest(
        name=f"Carted this week, spent 50 EUR or more ({run})",
        definition=json.dumps(definition),
        purpose=TARGETED_ADS,
    ), metadata=auth).segment
    show("segment", f"{segment.segment_id} v{segment.version}: {segment.name}")

    def joined():
        # Membership is kept by the audience room from the bus, once identity has
        # stitched the events: poll the members (paged) until she is one of them.
        token = ""
        while True:
            page = audience_api.ListMembers(audience.ListMembersRequest(
                segment_id=segment.segment_id, page_size=500, page_token=token), metadata=auth)
            mine = [m for m in page.members if m.profile_id == profile.profile_id]
            if mine or not page.next_page_token:
                return mine[0] if mine else None
            token = page.next_page_token

    member = wait_for("the shopper joining the segment", joined, args.timeout)
    show("ListMembers", f"{member.profile_id} ({member.jurisdiction}) joined {member.joined_at.ToJsonString()}")
    # PreviewSegment counts and samples without sending anything anywhere.
    preview = audience_api.PreviewSegment(
        audience.PreviewSegmentRequest(segment_id=segment.segment_id, sample_size=5), metadata=auth)
    show("PreviewSegment", f"{preview.count} member(s), by home region {dict(preview.count_by_region)}")
    for sampled in preview.sample:
        show("  sample", f"{sampled.profile_id} ({sampled.jurisdiction})")

    step(7, "ConsentService.GetConsent: the current state per purpose")
    states = consent_api.GetConsent(consent.GetConsentRequest(subject=shopper), metadata=auth).states
    for state in states:
        show(state.purpose, f"{c.ConsentDecision.Name(state.decision)} until "
                            f"{state.expires_at.time.ToJsonString()} ({state.expires_at.time_zone})")

    step(8, "ConsentService.VerifyLedger: every hash link and signature")
    verified = consent_api.VerifyLedger(consent.VerifyLedgerRequest(), metadata=auth)
    show("valid", f"{verified.valid}, {verified.entries_checked} entries, head #{verified.head_sequence}")
    show("public key", verified.public_key)
    if not verified.valid:
        raise RuntimeError(f"the ledger does not verify: {verified.reason}")

    def finished(request_id):
        request = dsr_api.GetRequest(consent.GetRequestRequest(request_id=request_id), metadata=auth).request
        done = request.status in (consent.REQUEST_STATUS_COMPLETED, consent.REQUEST_STATUS_REJECTED)
        return request if done else None

    step(9, "DsrService.SubmitRequest(ACCESS) → GetRequest: everything held about her")
    submitted = dsr_api.SubmitRequest(consent.SubmitRequestRequest(
        kind=consent.REQUEST_KIND_ACCESS, subject=c.SubjectRef(identifiers=[email]),
        jurisdiction="EU-FR", time_zone="Europe/Paris", idempotency_key=f"tour-access-{run}",
    ), metadata=auth).request
    show("request", f"{submitted.request_id}, regime {submitted.regime}, due "
                    f"{submitted.deadline.time.ToJsonString()} ({submitted.deadline.time_zone})")
    access = wait_for("the access request", lambda: finished(submitted.request_id), args.timeout)
    show("status", consent.RequestStatus.Name(access.status))
    bundle = json.loads(access.access_bundle_json)
    show("bundle", f"{len(access.access_bundle_json)} bytes, format {bundle.get('format')}")
    for section in ["profile", "identifiers", "events", "audience_memberships"]:
        show(f"  {section}", f"{len(bundle.get(section) or [])} item(s)")

    step(10, "DsrService.SubmitRequest(ERASURE) → GetRequest until completed")
    submitted = dsr_api.SubmitRequest(consent.SubmitRequestRequest(
        kind=consent.REQUEST_KIND_ERASURE, subject=shopper,
        jurisdiction="EU-FR", time_zone="Europe/Paris", idempotency_key=f"tour-erasure-{run}",
    ), metadata=auth).request
    show("request", submitted.request_id)
    erasure = wait_for("the erasure saga", lambda: finished(submitted.request_id), args.timeout)
    show("status", consent.RequestStatus.Name(erasure.status))
    if erasure.status != consent.REQUEST_STATUS_COMPLETED:
        raise RuntimeError(f"the erasure ended {consent.RequestStatus.Name(erasure.status)}")
    for s in erasure.steps:
        show("  step", f"{s.name}: {consent.StepState.Name(s.state)}")
    receipt = json.loads(erasure.receipt_json)
    print("   signed receipt (Ed25519 over these exact bytes):")
    print("\n".join("     " + line for line in json.dumps(receipt, indent=2).splitlines()))
    show("signature", erasure.receipt_signature)

    # The proof a regulator would ask for: the profile is gone, the ledger still verifies.
    try:
        identity_api.LookupProfile(identity.LookupProfileRequest(identifier=email), metadata=auth)
        raise RuntimeError("the profile is still there after the erasure")
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        show("LookupProfile after erasure", error.code().name)
    verified = consent_api.VerifyLedger(consent.VerifyLedgerRequest(), metadata=auth)
    show("ledger after erasure", f"valid {verified.valid}, {verified.entries_checked} entries")
    print("\nTour complete.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", default=os.environ.get("MERIDIAN_GRPC", "127.0.0.1:50051"),
                        help="gRPC address of `meridian serve` (MERIDIAN_GRPC)")
    parser.add_argument("--http", default=os.environ.get("MERIDIAN_HTTP", "127.0.0.1:8080"),
                        help="HTTP address of `meridian serve` (MERIDIAN_HTTP)")
    parser.add_argument("--api-key", default=os.environ.get("MERIDIAN_API_KEY"),
                        help="API key with the admin scope (MERIDIAN_API_KEY)")
    parser.add_argument("--write-key", default=os.environ.get("MERIDIAN_WRITE_KEY"),
                        help="key for the HTTP API, ingest scope (MERIDIAN_WRITE_KEY; default: --api-key)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for each asynchronous step")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give --api-key or set MERIDIAN_API_KEY (meridian keys create-api-key --scopes admin …)")
    args.write_key = args.write_key or args.api_key
    try:
        tour(args, generate_stubs())
    except grpc.RpcError as error:
        sys.exit(f"\nfailed: {error.code().name}: {error.details()}")
    except grpc.FutureTimeoutError:
        sys.exit(f"\nfailed: no gRPC server answered on {args.grpc} within {args.timeout:.0f} s")
    except (RuntimeError, TimeoutError, urllib.error.URLError) as error:
        sys.exit(f"\nfailed: {error}")


if __name__ == "__main__":
    main()

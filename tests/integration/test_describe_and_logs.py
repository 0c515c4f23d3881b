"""DescribeFederation shows each city's agreement terms; each node logs the exact signed result it
returned, at the index it reported, durably before the reply."""

from __future__ import annotations

from audit.merkle import leaf_hash, verify_inclusion
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from citybroker.broker.v1 import broker_pb2
from domain import agreement as agreement_doc
from domain import statements
from edge.wire import envelope_from_pb
from keys import dsse
from tests.conftest import PURPOSE, RunningFederation
from tests.integration.conftest import Wire, by_mode


def test_describe_federation_lists_the_three_cities(federation: RunningFederation) -> None:
    with federation.partner() as client:
        offers = client.describe_federation()
    fed = federation.fed
    assert [c.city for c in offers] == ["aurora", "borealis", "cascadia"]
    for offer in offers:
        plan = fed.cities[offer.city].plan
        assert (offer.name, offer.jurisdiction) == (plan.name, plan.jurisdiction)
        assert offer.outcome.status == "answered"
        ((a, signed),) = offer.agreements
        assert a.agreement_id == f"{offer.city}--{fed.partner_id}"
        assert a.version == 1
        assert list(a.purposes) == [PURPOSE]
        assert a.min_cell_size == 10
        assert set(a.datasets) == {"mobility", "traffic"}
        terms = {
            f: (t.appearance.value, sorted(t.generalisations))
            for f, t in a.datasets["mobility"].items()
        }
        assert terms == {
            "distance_km": ("aggregate_only", []),
            "district": ("raw", []),
            "mode": ("raw", []),
            "trip_date": ("generalised", ["month", "year"]),
        }
        # The terms are the agreement itself, signed by city and partner.
        verified = agreement_doc.verify(signed, fed.bundle)
        assert (verified.provider, verified.consumer) == (offer.city, fed.partner_id)
        assert verified.purposes == frozenset(a.purposes)


def test_describe_federation_summarises_each_agreement_on_the_wire(wire: Wire) -> None:
    """What any gRPC client reads: the broker's per-dataset summary of each signed agreement."""
    response = wire.broker().DescribeFederation(
        broker_pb2.DescribeFederationRequest(), metadata=wire.bearer_describe(), timeout=15
    )
    fed = wire.fed
    assert [c.city_id for c in response.cities] == ["aurora", "borealis", "cascadia"]
    for offer in response.cities:
        assert offer.outcome.status == broker_pb2.CITY_STATUS_ANSWERED
        (a,) = offer.agreements
        assert a.agreement_id == f"{offer.city_id}--{fed.partner_id}"
        by_name = {d.dataset: d for d in a.datasets}
        assert set(by_name) == {"mobility", "traffic"}
        terms = {
            f.field: (f.appearance, list(f.generalisations)) for f in by_name["mobility"].fields
        }
        assert terms == {
            "distance_km": ("aggregate_only", []),
            "district": ("raw", []),
            "mode": ("raw", []),
            "trip_date": ("generalised", ["month", "year"]),
        }
        # The summary is backed by the agreement itself, signed by city and partner.
        verified = agreement_doc.verify(envelope_from_pb(a.signed_agreement), fed.bundle)
        assert (verified.provider, verified.consumer) == (offer.city_id, fed.partner_id)


def test_describe_reports_a_city_that_is_down(fresh_federation: RunningFederation) -> None:
    fresh_federation.nodes["cascadia"].stop(0)
    with fresh_federation.partner() as client:
        offers = client.describe_federation()
    outcomes = {c.city: (c.outcome.status, c.outcome.code) for c in offers}
    assert outcomes == {
        "aurora": ("answered", "OK"),
        "borealis": ("answered", "OK"),
        "cascadia": ("failed", "UNAVAILABLE"),
    }
    assert [len(c.agreements) for c in offers] == [1, 1, 0]


def test_node_log_holds_the_exact_signed_result(wire: Wire) -> None:
    nodes = wire.rf.nodes
    sizes = {c: n.log.size() for c, n in nodes.items()}
    response = wire.query(by_mode())
    for outcome in response.cities:
        assert outcome.status == broker_pb2.CITY_STATUS_ANSWERED
        log = nodes[outcome.city_id].log
        assert log.size() > sizes[outcome.city_id]
        assert sizes[outcome.city_id] <= outcome.log_index < log.size()
        returned = envelope_from_pb(outcome.signed_result)
        (entry,) = log.entries(outcome.log_index, outcome.log_index + 1)
        assert entry == returned.to_json()
        logged = dsse.Envelope.from_json(entry)
        assert logged.payload == outcome.signed_result.payload  # the very bytes that were signed
        assert statements.verify_result(logged, wire.fed.bundle)["city"] == outcome.city_id
        # The node's signed checkpoint covers the entry, and an inclusion proof shows it.
        key = NoteVerifier.for_key(
            f"citybroker/node/{outcome.city_id}", wire.fed.cities[outcome.city_id].signer.public
        )
        origin, size, root = parse_checkpoint(verify_note(log.checkpoint(), [key]))
        assert origin == f"citybroker/node/{outcome.city_id}"
        proof = log.inclusion_proof(outcome.log_index, size)
        verify_inclusion(outcome.log_index, size, leaf_hash(entry), proof, root)
    # The broker's receipt names the same node log indexes.
    receipt = statements.verify_receipt(envelope_from_pb(response.receipt), wire.fed.bundle)
    listed = {c["city"]: c["node_log_index"] for c in receipt["cities"]}
    assert listed == {c.city_id: c.log_index for c in response.cities}


def test_broker_log_holds_the_signed_query_and_receipt(wire: Wire) -> None:
    log = wire.rf.broker.log
    before = log.size()
    response = wire.query(by_mode())
    assert log.size() >= before + 2
    entries = log.entries(before, log.size())
    assert envelope_from_pb(response.signed_query).to_json() in entries
    assert envelope_from_pb(response.receipt).to_json() in entries

"""PII: planted findings of every kind are found (and only they), redaction rewrites turns and
text consistently, drop/flag behave, and real ShareGPT output is clean after redaction."""
from __future__ import annotations

import polars as pl
import pytest

from curation.pii import PiiOptions, pii
from curation.pii_detect import PII_TYPES, PLACEHOLDERS, PREFILTER, detectors, find_pii, iban_ok, luhn_ok, redact
from curation.records import MESSAGES, render_text
from curation.step import StepContext

PLANTED = [
    ("email", "write to jane.doe+news@example.co.uk today", "jane.doe+news@example.co.uk"),
    ("email", "Contact: a_b-c@mail.example.org.", "a_b-c@mail.example.org"),
    ("phone", "call +44 20 7946 0958 tomorrow", "+44 20 7946 0958"),
    ("phone", "office (415) 555-2671 ext", "(415) 555-2671"),
    ("phone", "cell 415.555.2671.", "415.555.2671"),
    ("phone", "US: +1 (212) 555-0199", "+1 (212) 555-0199"),
    ("ip_address", "server at 81.2.69.160, port 22", "81.2.69.160"),
    ("ip_address", "v6 host 2a00:1450:4001:81b::200e is up", "2a00:1450:4001:81b::200e"),
    ("credit_card", "card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    ("credit_card", "amex 3782-822463-10005 ok", "3782-822463-10005"),
    ("credit_card", "mc 5555555555554444", "5555555555554444"),
    ("iban", "pay DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00"),
    ("iban", "IBAN: GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("secret", "OPENAI_API_KEY=sk-proj-abc123DEF456ghi789JKL012mno", "sk-proj-abc123DEF456ghi789JKL012mno"),
    ("secret", "aws id AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("secret", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dBjftJeZ4CVP", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dBjftJeZ4CVP"),
    ("secret", "token ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("secret", "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
     "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"),
]

LOOKALIKES = [
    "sprite icon@2x.png and logo@3x.jpg",          # file names, not addresses
    "4111 1111 1111 1112",                         # fails Luhn
    "9111 1111 1111 1116",                         # passes Luhn, no issuer starts with 9
    "order 1234567890123456 shipped",              # a long id failing Luhn
    "DE89 3704 0044 0532 0130 01",                 # IBAN with a wrong check
    "DE89 3704 0044 0532 01",                      # IBAN too short for DE
    "released 2023-01-15 at 12:30:45",             # date and time
    "version 1.2.3.4.5 and 10.0",                  # dotted versions
    "see section 2.4.3.5, revision 1.17.2.7 and v1.2.3.4",  # numbering that parses as an address
    "999.1.1.1 is not an address",                 # octet out of range
    "localhost 127.0.0.1, LAN 192.168.1.10, docs 203.0.113.5",  # not globally routable
    "std::vector<int> and a::b and dead::beef and ::1",          # C++/Rust paths, loopback
    "MAC 00:1A:2B:3C:4D:5E",
    "call 123-456-7890 (not a valid area code)",
    "zip 90210, year 1999, pi 3.14159265358979",
    "sk-learn, task-runner and sk-this-is-not-a-key-at-all",
    "Bearer YOUR_ACCESS_TOKEN_HERE and Bearer <token>",
    "AKIA but too short: AKIA1234",
    "price $1,234,567.89 and 12 345 678",
    "percentiles 5 10 15 20 25 30 40 50 60 70 80 90",  # digits that pass Luhn, but not a card's layout
    "@mention someone and user@localhost",
]


@pytest.mark.parametrize("kind,text,value", PLANTED, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(PLANTED)])
def test_planted_findings_are_found_with_their_kind(kind, text, value):
    found = find_pii(text, detectors(), set(PII_TYPES))
    assert [(text[s:e], k) for s, e, k in found] == [(value, kind)]
    assert redact(text, found) == text.replace(value, PLACEHOLDERS[kind])


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_are_not_findings(text):
    assert find_pii(text, detectors(), set(PII_TYPES)) == []


def test_private_addresses_count_when_asked():
    found = find_pii("LAN 192.168.1.10 and ::1", detectors(global_ips_only=False), {"ip_address"})
    assert [k for _, _, k in found] == ["ip_address", "ip_address"]


def test_prefilter_lets_every_planted_row_through():
    texts = pl.Series([t for _, t, _ in PLANTED])
    assert texts.str.contains(PREFILTER).all()


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert iban_ok("NL91ABNA0417164300") and not iban_ok("NL91ABNA041716430")


def test_overlaps_resolve_by_priority():
    # a card number also has a phone-like shape; an email's domain is not an address of its own
    text = "card 4111-1111-1111-1111 mail bob@81.2.69.160.example.com"
    found = find_pii(text, detectors(), set(PII_TYPES))
    assert [k for _, _, k in found] == ["credit_card", "email"]


def frame() -> pl.DataFrame:
    rows = [
        [{"role": "user", "content": "I am at jane@example.org, card 4111 1111 1111 1111"},
         {"role": "assistant", "content": "Thanks! I will call +44 20 7946 0958."}],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "version 1.2.3 released 2023-01-15"}, {"role": "assistant", "content": "ok"}],
        [],
    ]
    texts = [render_text(r) for r in rows[:3]] + ["plain row from 81.2.69.160 with key AKIAIOSFODNN7EXAMPLE"]
    return pl.DataFrame({"id": ["a", "b", "c", "d"], "messages": rows, "text": texts, "source": "t",
                         "label": [1, 2, 3, 4]}, schema_overrides={"messages": MESSAGES})


def test_redact_rewrites_turns_and_rerenders_text():
    df = frame()
    ctx = StepContext()
    kept, rejected = pii(df, PiiOptions(), ctx)
    assert len(kept) == 4 and len(rejected) == 0
    assert kept["id"].to_list() == df["id"].to_list() and kept["label"].to_list() == [1, 2, 3, 4]
    a = kept.row(0, named=True)
    assert a["messages"][0]["content"] == "I am at <EMAIL>, card <CREDIT_CARD>"
    assert a["messages"][1]["content"] == "Thanks! I will call <PHONE>."
    assert a["text"] == render_text(a["messages"])
    assert kept["pii_count"].to_list() == [3, 0, 0, 2]
    assert kept["pii_types"].to_list() == [["credit_card", "email", "phone"], [], [], ["ip_address", "secret"]]
    assert kept["text"][3] == "plain row from <IP_ADDRESS> with key <SECRET>"
    assert kept.row(1, named=True)["messages"] == df.row(1, named=True)["messages"]
    assert ctx.stats["by_type"] == {"secret": 1, "email": 1, "iban": 0, "credit_card": 1, "ip_address": 1, "phone": 1}
    assert ctx.stats["rows_with_pii"] == 2


def test_drop_rejects_rows_with_findings():
    kept, rejected = pii(frame(), PiiOptions(action="drop"), StepContext())
    assert kept["id"].to_list() == ["b", "c"]
    assert dict(rejected.select("id", "reason").iter_rows()) == {"a": "pii:credit_card,email,phone", "d": "pii:ip_address,secret"}
    assert set(rejected["stage"]) == {"pii"}
    assert rejected["text"][0] == frame()["text"][0]  # rejected as found, not redacted


def test_flag_changes_nothing_but_counts():
    df = frame()
    kept, rejected = pii(df, PiiOptions(action="flag", types=["email", "secret"]), StepContext())
    assert kept.select(df.columns).equals(df) and len(rejected) == 0
    assert kept["pii_count"].to_list() == [1, 0, 0, 1]


def test_sharegpt_redaction_is_complete_and_consistent(sharegpt_df):
    """Real conversations: after redaction nothing is found any more, and text matches messages."""
    ctx = StepContext()
    kept, rejected = pii(sharegpt_df, PiiOptions(), ctx)
    assert len(kept) == len(sharegpt_df) and len(rejected) == 0
    dets = detectors()
    for row in kept.filter(pl.col("pii_count") > 0).iter_rows(named=True):
        assert row["text"] == render_text(row["messages"])
        assert all(find_pii(m["content"], dets, set(PII_TYPES)) == [] for m in row["messages"])
        assert sum(row["text"].count(p) for p in PLACEHOLDERS.values()) >= row["pii_count"]
    untouched = kept.filter(pl.col("pii_count") == 0)
    assert untouched["text"].to_list() == sharegpt_df.filter(pl.col("id").is_in(untouched["id"].implode()))["text"].to_list()
    assert ctx.stats["findings"] == kept["pii_count"].sum()


def test_each_detector_runs_where_its_hint_is(sharegpt_df):
    """A row runs only the detectors whose hint it holds: every planted finding holds its detector's
    hint, and on real conversations the findings equal those of all detectors on every row."""
    from curation.pii import _hinted

    dets = detectors(global_ips_only=False)
    for kind, text, value in PLANTED:
        finders = [d for d in dets if d.kind == kind and find_pii(text, [d], {kind})]
        matches = pl.Series([d.pattern.search(text).group(0) for d in finders])  # whole matches, not the redacted group
        assert finders and all(matches.str.contains(d.hint)[i] for i, d in enumerate(finders)), (kind, value)
    texts = pl.Series([t for _, t, _ in PLANTED] + LOOKALIKES + sharegpt_df["text"].to_list())
    for text, row_dets in zip(texts, _hinted(texts, dets)):
        assert find_pii(text, row_dets, set(PII_TYPES)) == find_pii(text, dets, set(PII_TYPES)), text[:80]

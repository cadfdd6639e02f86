"""Golden table of `bulk backdoor` over every trace in tests/data.

    python -m tests.backdoor_golden           # diff the tool's output against the table
    python -m tests.backdoor_golden --write   # regenerate tests/data/backdoor_golden.json

The table has, per trace, ``expected``: the services on non-standard ports a
payload detector must report (``service@port``), taken from the corpus
manifest's ``backdoor_expected`` (entries for services outside the detector's
list, like DNS, and the ambiguous get-to-ssh-server are left out, see
``NOTES``); and ``findings``: every connection the tool classified, standard
or not (``--all``), as (service, server port, client port, standard). The
expected lists are ground truth and are never regenerated; the findings are
the tool's output, regenerated on purpose and reviewed by diff.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from bulk.analyzers import backdoor_run
from bulk.analyzers.backdoor import BackdoorConfig, Finding
from bulk.errors import TraceError

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "backdoor_golden.json"
MANIFEST = DATA / "manifest.json"
TRACE_SUFFIXES = (".pcap", ".pcapng")

# Why some manifest entries are not expected findings, and what was checked by
# reading the payloads (tcpflow) beyond the manifest.
NOTES = {
    "dns_tcp_8053.pcap": "DNS is not in the detector's service list: nothing expected.",
    "get-to-ssh-server.pcap": "Ambiguous in the manifest: the client sends an HTTP GET, the "
    "server on 22 answers with its SSH banner. The server decides the service: ssh on its "
    "standard port, so nothing is reported (the evidence notes the client spoke http).",
    "http-on-irc-port-missing-syn.pcapng": "The server is 192.150.187.43:80 (it sends "
    "'HTTP/1.1 200 OK'); 6669 is the client's port. Nothing expected.",
    "ndpi-http_on_sip_port.pcap": "The client's port is 5060; the server is on 8888.",
    "zeek-ftp-retr.pcap": "FTP data on a high port is not a backdoor (no signature matches).",
    "zeek-ftp-ipv6.pcap": "FTP data connections (EPSV, EPRT) on high ports: nothing expected.",
    "irc-dcc-send.pcapng": "The DCC CHAT and DCC SEND connections on high ports carry no "
    "service signature and too few keystrokes for the interactive test.",
    "zeek-smtp.pcap": "TLS on 5223 is seen midstream (records only): recognised as tls "
    "(tls-records) on a de-facto standard port (XMPP over TLS, Apple push), not reported. "
    "Yahoo Messenger on 5050 is seen midstream (application data only): not reported.",
    "mixed-vlan-mpls.pcap": "Telnet inside MPLS on port 23 is standard.",
}

_SIMPLE = re.compile(r"[a-z0-9-]+@\d+$")


def traces() -> list[Path]:
    return sorted(p for p in DATA.iterdir() if p.name.endswith(TRACE_SUFFIXES))


def manifest_expected() -> dict[str, list[str]]:
    """service@port entries of the manifest a payload detector can report."""
    out: dict[str, list[str]] = {}
    for entry in json.loads(MANIFEST.read_text()):
        out[entry["file"]] = sorted(e for e in entry["backdoor_expected"] if _SIMPLE.match(e))
    return out


def finding_row(f: Finding) -> dict[str, Any]:
    return {
        "service": f.service,
        "server_port": f.server.port,
        "client_port": f.client.port,
        "standard": f.standard,
    }


def analyze(path: Path, fast: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Every classified connection of one trace (--all), and a read error if any."""
    found: list[Finding] = []
    error = None
    try:
        backdoor_run.run([str(path)], BackdoorConfig(report_standard=True), found.append, fast=fast)
    except TraceError as exc:
        error = type(exc).__name__
    rows = sorted((finding_row(f) for f in found), key=lambda r: json.dumps(r, sort_keys=True))
    return rows, error


def generate() -> dict[str, Any]:
    expected = manifest_expected()
    table: dict[str, Any] = {}
    for path in traces():
        rows, error = analyze(path, fast=True)
        entry: dict[str, Any] = {"expected": expected.get(path.name, []), "findings": rows}
        if error:
            entry["read_error"] = error
        if path.name in NOTES:
            entry["note"] = NOTES[path.name]
        table[path.name] = entry
    return {"comment": __doc__.strip().splitlines()[0], "traces": table}


def score(table: dict[str, Any]) -> tuple[float, float, int, int, int]:
    """(precision, recall, true positives, reported, expected) of non-standard findings."""
    reported = expected = tp = 0
    for entry in table["traces"].values():
        truth = set(entry["expected"])
        got = {f"{r['service']}@{r['server_port']}" for r in entry["findings"] if not r["standard"]}
        reported += len(got)
        expected += len(truth)
        tp += len(got & truth)
    precision = tp / reported if reported else 1.0
    recall = tp / expected if expected else 1.0
    return precision, recall, tp, reported, expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the golden file")
    args = parser.parse_args()
    new = generate()
    text = json.dumps(new, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN}")
    elif GOLDEN.exists():
        old = json.loads(GOLDEN.read_text())
        changed = 0
        for name in sorted(set(old["traces"]) | set(new["traces"])):
            a = old["traces"].get(name)
            b = new["traces"].get(name)
            if a != b:
                changed += 1
                print(f"--- {name}\n  golden: {json.dumps(a)}\n  now:    {json.dumps(b)}")
        print(f"{changed} traces differ from {GOLDEN.name}")
    p, r, tp, reported, expected = score(new)
    print(f"precision {p:.3f} ({tp}/{reported}), recall {r:.3f} ({tp}/{expected})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

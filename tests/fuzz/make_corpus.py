#!/usr/bin/env python3
"""Writes the checked-in seed corpus of every fuzz target (corpus/<target>/).

Seeds are real encodings: the layouts of docs/protocol.md with the values of
keyward-protocol's unit tests, the evidence receipt of docs/protocol.md §11,
the test certificates of tests/vectors/channel, CSRs and OCSP requests made
by openssl against issuer.der's key, and the repository's config files. Run
from anywhere (needs python3 and openssl); rerunning rewrites the same files
except the openssl-made ones (fresh keys).
"""

import base64
import hashlib
import pathlib
import struct
import subprocess
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def u16(v):
    return struct.pack(">H", v)


def u32(v):
    return struct.pack(">I", v)


def u64(v):
    return struct.pack(">Q", v)


def text(s):
    return bytes([len(s)]) + s.encode()


def pem_ders(path):
    out, cur = [], None
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith("-----BEGIN"):
            cur = []
        elif line.startswith("-----END"):
            out.append(base64.b64decode("".join(cur)))
            cur = None
        elif cur is not None:
            cur.append(line.strip())
    return out


def load():
    device = bytes.fromhex("00A1B2C3D4E5F601")
    nonce = bytes(range(16))
    request = (b"KWLR\x01" + device + u64(7) + u64(6) + u64(1500) + u64(2500) + b"EUR"
               + u32(1) + b"\x01" + nonce + text("customer-42") + text("DE89370400440532013000"))
    write("load", "request", request)
    write("load", "request-rsa", request.replace(b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x02\x02", 1))
    rid = hashlib.sha256(request).digest()
    load_id = bytes(range(0x40, 0x50))
    permit = (b"KWLP\x01" + rid + load_id + u64(7) + nonce + u64(2500) + b"EUR"
              + u64(1765000000000))
    write("load", "permit", permit)
    write("load", "report-applied", b"KWLX\x01" + load_id + rid + u64(7) + b"\x01\x00" + u64(4000))
    write("load", "report-failed", b"KWLX\x01" + load_id + rid + u64(7) + b"\x02\x03" + u64(1500))
    write("load", "status", b"KWLS\x01" + device + u64(8) + u64(7) + u64(4000) + b"EUR" + nonce)


def channel():
    chain = pem_ders(ROOT / "tests/vectors/channel/chain.pem")
    card = pem_ders(ROOT / "tests/vectors/channel/card.pem")[0]
    device = bytes.fromhex("00A1B2C3D4E5F601")
    write("channel", "client-hello",
          b"KWC1\x01" + bytes(range(32)) + b"\x01\x01" + b"\x02\x01\x02" + device)
    body = b"".join(u16(len(c)) + c for c in chain)
    write("channel", "server-hello",
          b"KWC2\x01" + bytes(range(32, 64)) + bytes(range(16)) + b"\x01\x01\x01"
          + u16(len(chain)) + body)
    signed = b"KWC3\x01" + u16(len(card)) + card + u16(256) + bytes(256)
    write("channel", "card-key-exchange", signed + u16(72) + bytes([0x30, 70]) + bytes(70))
    # ECDHE: the card's ephemeral (here the P-256 generator) after the
    # pre-master, inside the signed part.
    g = bytes.fromhex("046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
                      "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5")
    write("channel", "card-key-exchange-ecdhe",
          signed + u16(len(g)) + g + u16(72) + bytes([0x30, 70]) + bytes(70))
    write("channel", "server-finished", b"KWC4\x01" + bytes(range(16)) + bytes(range(16, 32)))
    write("channel", "resume-hello",
          b"KWC5\x01" + bytes(range(32)) + b"\x01\x01" + device + bytes(range(16)) + bytes(16))
    write("channel", "new-ticket", b"KWC6\x01" + bytes(range(16)) + bytes(range(16, 32)) + u32(86400))
    for kind in (1, 2, 3):
        ct = bytes(16) if kind != 1 else bytes(48)
        write("channel", f"record-{kind}",
              b"KWCR\x01" + bytes(range(16)) + bytes([kind]) + u64(5) + u32(len(ct)) + ct)


def confirmation():
    sample = (b'{"payer_account":"DE02120300000000202051","payee_account":"DE89370400440532013000",'
              b'"payee_name":"ACME GmbH","amount":123456,"currency":"EUR",'
              b'"reference":"Invoice 2026-117"}')
    write("confirmation", "transaction", sample)
    write("confirmation", "transaction-cny",
          sample.replace(b'"EUR"', b'"CNY"').replace(b"ACME GmbH", "Müller & Söhne".encode()))
    write("confirmation", "code", b"20481735")
    doc = (ROOT / "docs/protocol.md").read_text()
    start = doc.index("keyward-confirmation-evidence/v1\n")
    end = doc.index("```", start)
    write("confirmation", "evidence", doc[start:end])


def bulk():
    items = [
        ("00A1B2C3D4E5F601", "bank-a", 1, "ISO9797-1-M3", 1, b"0123456789ABCDEF", bytes(8)),
        ("00A1B2C3D4E5F602", "bank-a", 2, "CMAC-AES", None, b"hello", bytes(8)),
        ("00A1B2C3D4E5F603", "bank-b", 1, "CUP-ECB", None, b"12345678", b"E267B6E2"),
    ]
    import json
    js = {"items": []}
    for dev, issuer, ver, alg, pad, msg, mac in items:
        it = {"device_id": dev, "issuer_id": issuer, "key_version": ver, "algorithm": alg,
              "message": base64.b64encode(msg).decode(),
              "mac": mac.decode() if alg == "CUP-ECB" else base64.b64encode(mac).decode()}
        if pad is not None:
            it["padding"] = pad
        js["items"].append(it)
    write("bulk_json", "three", json.dumps(js))
    write("bulk_json", "one", json.dumps({"items": js["items"][:1]}))
    write("bulk_json", "empty", '{"items":[]}')
    codes = {"ISO9797-1-M1-TDES": 1, "ISO9797-1-M3": 2, "CMAC-TDES": 3, "CMAC-AES": 4, "CUP-ECB": 5}
    frames = []
    for dev, issuer, ver, alg, pad, msg, mac in items:
        frames.append(bytes.fromhex(dev) + text(issuer) + u32(ver) + bytes([codes[alg], pad or 0])
                      + u32(len(msg)) + msg + bytes([len(mac)]) + mac)
    write("bulk_binary", "three", b"KWMV\x01\x00" + u32(3) + b"".join(frames))
    write("bulk_binary", "one", b"KWMV\x01\x00" + u32(1) + frames[0])
    write("bulk_binary", "empty", b"KWMV\x01\x00" + u32(0))


def openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], check=True, capture_output=True, input=stdin).stdout


def pki():
    with tempfile.TemporaryDirectory() as t:
        t = pathlib.Path(t)
        csrs = {}
        for name, key in (("p256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                          ("p384", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]),
                          ("rsa2048", ["-newkey", "rsa:2048"])):
            pem = openssl("req", "-new", *key, "-nodes", "-keyout", str(t / f"{name}.key"),
                          "-subj", "/serialNumber=00A1B2C3D4E5F601/CN=device")
            der = openssl("req", "-in", "/dev/stdin", "-outform", "DER", stdin=pem)
            write("csr", f"{name}.pem", pem)
            write("csr", f"{name}.der", der)
            csrs[name] = der
        header = "device_id,psam_serial,esam_serial,model,firmware,csr\n"
        rows = [f"00A1B2C3D4E5F60{i},PSAM0{i},ESAM0{i},KW-T1,1.4.{i},"
                + base64.b64encode(csrs[n]).decode() + "\n"
                for i, n in ((1, "p256"), (2, "rsa2048"))]
        write("manifest", "two-rows", "# factory run 7\n" + header + "".join(rows))
        write("manifest", "psam-only", header + rows[0].replace(",ESAM01,", ",,"))
        issuer = t / "issuer.pem"
        issuer.write_bytes(openssl("x509", "-inform", "DER", "-in", str(HERE / "issuer.der")))
        for name, before, after in (("sha1", [], ["-no_nonce"]), ("sha256", ["-sha256"], ["-no_nonce"]),
                                    ("nonce", [], ["-nonce"]),
                                    ("two", [], ["-serial", "0x0BADC0DE", "-no_nonce"])):
            req = t / f"{name}.der"
            openssl("ocsp", "-issuer", str(issuer), *before,
                    "-serial", "0x1CF5A0B7D2E94C3F8A6B1D0E7F2C9A45", *after, "-reqout", str(req))
            write("ocsp", name, req.read_bytes())


def config():
    for path in ("config/dev.toml", "config/example.toml"):
        p = ROOT / path
        if p.exists():
            write("config", p.name, p.read_bytes())
    write("config", "minimal", '[hsm]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\n'
          'token_label = "keyward"\npin_file = "pin"\n')


if __name__ == "__main__":
    load()
    channel()
    confirmation()
    bulk()
    pki()
    config()

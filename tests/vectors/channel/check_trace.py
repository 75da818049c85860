#!/usr/bin/env python3
"""Recomputes the worked traces (RSA transport, ECDHE) of docs/protocol.md
section 14.6 from their inputs with Python's `cryptography`, independently of the Rust code:
  python3 tests/vectors/channel/check_trace.py [docs/protocol.md]
Exits non-zero on the first value that differs."""
import hashlib, re, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography import x509

doc = open(sys.argv[1] if len(sys.argv) > 1 else "docs/protocol.md").read()
def values(marker):
    block = doc.split(marker, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    t, name = {}, None
    for line in block.splitlines():
        head, hexpart = line[:22].strip(), line[22:].strip()
        if head:
            name = head
            t[name] = ""
        t[name] += hexpart
    return {k: bytes.fromhex(v) for k, v in t.items()}
t = values("<!-- channel-trace -->")

P = b"keyward channel v1 "
sha = lambda *a: hashlib.sha256(b"".join(a)).digest()
def prf(k, d):
    e = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
    return e.update(d) + e.finalize()
def cmac(k, m):
    c = CMAC(algorithms.AES(k)); c.update(m); return c.finalize()
def check(name, value):
    if t[name] != value:
        sys.exit(f"{name}: trace {t[name].hex()} != recomputed {value.hex()}")

ch, sh, cke = t["ClientHello"], t["ServerHello"], t["CardKeyExchange"]
assert ch[5:37] == t["client_random"] and sh[5:37] == t["server_random"]
assert sh[37:53] == t["channel_id"]
# ServerHello byte 55: the OAEP hash the card encrypts with (1 SHA-1, 2 SHA-256).
oaep_hash = {1: hashes.SHA1, 2: hashes.SHA256}[sh[55]]
# KWC3: cert, encrypted pre-master, signature (u16 lengths).
n = int.from_bytes(cke[5:7], "big"); cert = cke[7:7 + n]; o = 7 + n
m = int.from_bytes(cke[o:o + 2], "big"); epms = cke[o + 2:o + 2 + m]; o += 2 + m
signed_part = cke[:o]
s = int.from_bytes(cke[o:o + 2], "big"); sig = cke[o + 2:o + 2 + s]
assert o + 2 + s == len(cke)
check("encrypted_pre_master", epms)
check("card_signature", sig)
key = serialization.load_pem_private_key(open("tests/vectors/channel/channel-key.pem", "rb").read(), None)
oaep = padding.OAEP(mgf=padding.MGF1(oaep_hash()), algorithm=oaep_hash(), label=None)
assert key.decrypt(epms, oaep) == t["pre_master (PMS)"]
sig_input = P + b"card signature\0" + sha(ch, sh, signed_part)
check("card_signature_input", sig_input)
x509.load_der_x509_certificate(cert).public_key().verify(sig, sig_input, ec.ECDSA(hashes.SHA256()))

H = sha(ch, sh, cke); check("H", H)
d = sha(P, b"master", H); check("D_ms", d)
ms = prf(t["pre_master (PMS)"], d); check("MS", ms)
K = {}
for l in ["c2s key", "s2c key", "finished", "exporter", "resumption"]:
    d = sha(P, l.encode(), H); check(f"D[{l}]", d)
    K[l] = prf(ms, d); check(f"K[{l}]", K[l])
iv = {x: sha(P, x.encode() + b" iv", H)[:12] for x in ["c2s", "s2c"]}
check("iv_c2s", iv["c2s"]); check("iv_s2c", iv["s2c"])
check("ServerFinished", b"KWC4\x01" + t["channel_id"] + cmac(K["finished"], H))
for x, plain in [("c2s", b'{"ping":1}'), ("s2c", b'{"pong":1}')]:
    nonce = bytes(a ^ b for a, b in zip(iv[x], (0).to_bytes(12, "big")))
    check(f"{x} record 0 nonce", nonce)
    header = b"KWCR\x01" + t["channel_id"] + b"\x01" + (0).to_bytes(8, "big")
    ct = AESGCM(K[f"{x} key"]).encrypt(nonce, plain, header)
    check(f"{x} record 0", header + len(ct).to_bytes(4, "big") + ct)
ctx = P + b"exporter" + b"/v1/login/start"; check("exporter_context", ctx)
check("E(/v1/login/start)", cmac(K["exporter"], ctx))
r = sha(P, b"rekey", (1).to_bytes(8, "big")); check("rekey_input(1)", r)
check("K[c2s key] gen 1", prf(K["c2s key"], r))

# Resumption (section 14.8) with the ticket of the channel above.
nt = t["NewTicket"]
assert nt[:5] == b"KWC6\x01" and nt[5:21] == t["channel_id"] and len(nt) == 41
assert 0 < int.from_bytes(nt[37:41], "big") <= 86400
rh, rsh = t["ResumeHello"], t["r.ServerHello"]
assert rh[:5] == b"KWC5\x01" and rh[5:37] == t["r.client_random"]
assert rh[37:39] == b"\x01\x01" and rh[39:47] == ch[-8:] and rh[47:63] == nt[21:37]
db = sha(P, b"binder"); check("D_binder", db)
kb = prf(K["resumption"], db); check("K_binder", kb)
assert rh[63:] == cmac(kb, rh[:63]) and len(rh) == 79
assert rsh == b"KWC2\x01" + t["r.server_random"] + t["r.channel_id"] + b"\x01\x03\x02\x00\x00"
rH = sha(rh, rsh); check("r.H", rH)
rd = sha(P, b"resumption master", rH); check("r.D_ms", rd)
rms = prf(K["resumption"], rd); check("r.MS", rms)
rK = {}
for l in ["c2s key", "s2c key", "finished", "exporter", "resumption"]:
    rK[l] = prf(rms, sha(P, l.encode(), rH)); check(f"r.K[{l}]", rK[l])
check("r.iv_c2s", sha(P, b"c2s iv", rH)[:12]); check("r.iv_s2c", sha(P, b"s2c iv", rH)[:12])
check("r.ServerFinished", b"KWC4\x01" + t["r.channel_id"] + cmac(rK["finished"], rH))
print(f"the trace holds: {len(t)} values recomputed or checked")

# The ECDHE-P256 mode (mode 02): both ephemerals, C and the hybrid master.
e = values("<!-- channel-trace-ecdhe -->")
def check_e(name, value):
    if e[name] != value:
        sys.exit(f"ecdhe {name}: trace {e[name].hex()} != recomputed {value.hex()}")
label_key = lambda l: ec.derive_private_key(int.from_bytes(sha(l), "big"), ec.SECP256R1())
server_eph = label_key(b"keyward channel trace server ephemeral")
card_eph = label_key(b"keyward channel trace card ephemeral")
check_e("server_ephemeral_key", server_eph.private_numbers().private_value.to_bytes(32, "big"))
check_e("card_ephemeral_key", card_eph.private_numbers().private_value.to_bytes(32, "big"))
point = lambda k: k.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
check_e("server_ephemeral", point(server_eph)); check_e("card_ephemeral", point(card_eph))
ch, sh, cke = e["ClientHello"], e["ServerHello"], e["CardKeyExchange"]
# The card offers 02 then 01; the server chose 02 and ends its hello with its key.
assert ch[37:42] == b"\x01\x01\x02\x02\x01" and sh[54] == 2
assert sh.endswith(b"\x00\x41" + point(server_eph))
n = int.from_bytes(cke[5:7], "big"); o = 7 + n
m = int.from_bytes(cke[o:o + 2], "big"); epms = cke[o + 2:o + 2 + m]; o += 2 + m
assert cke[o:o + 67] == b"\x00\x41" + point(card_eph); o += 67
signed_part = cke[:o]
s = int.from_bytes(cke[o:o + 2], "big"); sig = cke[o + 2:o + 2 + s]
assert o + 2 + s == len(cke)
check_e("encrypted_pre_master", epms); check_e("card_signature", sig)
oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
assert sh[55] == 2 and key.decrypt(epms, oaep) == e["pre_master (PMS)"]
sig_input = P + b"card signature\0" + sha(ch, sh, signed_part)
check_e("card_signature_input", sig_input)
x509.load_der_x509_certificate(cke[7:7 + n]).public_key().verify(sig, sig_input, ec.ECDSA(hashes.SHA256()))
z = server_eph.exchange(ec.ECDH(), card_eph.public_key())
assert z == card_eph.exchange(ec.ECDH(), server_eph.public_key())
check_e("Z (ECDH x)", z)
H = sha(ch, sh, cke); check_e("H", H)
d = sha(P, b"master", H); check_e("D_ms", d)
c = prf(z, d); check_e("C", c)
dh = sha(P, b"hybrid master", c, H); check_e("D_hybrid", dh)
ms = prf(e["pre_master (PMS)"], dh); check_e("MS", ms)
K = {}
for l in ["c2s key", "s2c key", "finished", "exporter", "resumption"]:
    K[l] = prf(ms, sha(P, l.encode(), H)); check_e(f"K[{l}]", K[l])
check_e("iv_c2s", sha(P, b"c2s iv", H)[:12]); check_e("iv_s2c", sha(P, b"s2c iv", H)[:12])
check_e("ServerFinished", b"KWC4\x01" + sh[37:53] + cmac(K["finished"], H))
print(f"the ECDHE trace holds: {len(e)} values recomputed or checked")

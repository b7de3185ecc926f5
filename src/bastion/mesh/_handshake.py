"""Challenge-response handshake over HTTP: both peers prove possession of their DID's key.

Messages are JSON over ``POST``; a *proof* is an Ed25519 signature (domain
``bastion-handshake-v1``) over the canonical JSON of ``{"challenge", "prover", "role",
"verifier"}``; ``role`` is ``server`` in the answer to a hello and ``client`` in a confirm, so a
server that signs any hello's challenge hands out nothing a client could confirm with.

1. The client sends ``/bastion/handshake/hello`` ``{"from": C, "challenge": c1}`` (32 random
   bytes, base64url).
2. The server answers ``{"from": S, "proof": proof_S(c1, prover=S, verifier=C, role=server),
   "challenge": c2}`` and keeps ``c2`` for ``C`` (single use, ``challenge_ttl_s``).
3. The client checks the proof against ``S`` (and ``S`` against ``expect``, when pinned), then
   admits ``S`` (``Admission``: registered, current key, not revoked, trust high enough).
4. The client sends ``/bastion/handshake/confirm`` ``{"from": C, "challenge": c2,
   "proof": proof_C(c2, prover=C, verifier=S, role=client)}``; the server takes ``c2``
   (once), checks the proof, admits ``C`` and answers ``{"ok": true}`` (else 403 with the
   reason).

Each side caches an admitted peer in a ``PeerCache`` for ``ttl_s``; a cached entry is honoured
only while the admission check still passes (re-run on every lookup), so a peer that is revoked
or drops below the required trust loses its place at once. Binding the handshake to a transport
session needs TLS (channel binding); on plain HTTP it proves key possession, not the channel.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bastion._canon import canonical_json
from bastion.kernel import AgentFacts
from bastion.mesh._errors import HandshakeError, VerificationError
from bastion.mesh._keys import Identity, verify_signature
from bastion.mesh._store import AgentRegistry
from bastion.mesh._tokens import b64d, b64e

DOMAIN = "bastion-handshake-v1"
Admit = Callable[[str], str | None]  # DID -> None (admitted) or the reason it is not
_MAX_PENDING = 10_000


def _proof_payload(challenge: str, prover: str, verifier: str, role: str) -> bytes:
    return canonical_json({"challenge": challenge, "prover": prover, "role": role,
                           "verifier": verifier})


def prove(identity: Identity, challenge: str, verifier: str, role: str = "client") -> str:
    """A proof for ``role``: ``"server"`` answers a hello, ``"client"`` confirms. The role is
    signed, so a proof a server handed out cannot be replayed as a client's confirm."""
    return b64e(identity.sign(DOMAIN, _proof_payload(challenge, identity.did, verifier, role)))


def check_proof(prover: str, challenge: str, verifier: str, proof: Any,
                role: str = "client") -> None:
    """``HandshakeError('signature')`` unless ``proof`` is ``prover``'s signature as ``role``."""
    try:
        verify_signature(prover, DOMAIN, _proof_payload(challenge, prover, verifier, role),
                         b64d(proof))
    except (VerificationError, ValueError, TypeError) as exc:
        raise HandshakeError("signature", f"proof by {prover!r} does not verify: {exc}") \
            from None


class Admission:
    """Admits a DID that is the current key of a registered, active agent whose trust (from
    ``facts``, i.e. ``TrustFacts``) is at least ``min_trust``."""

    def __init__(self, registry: AgentRegistry, *, facts: AgentFacts | None = None,
                 min_trust: int = 0):
        self._registry = registry
        self._facts = facts
        self._min = min_trust

    def __call__(self, did: str) -> str | None:
        record = self._registry.by_did(did)
        if record is None or not record.active or not self._registry.is_current_key(did):
            return f"{did!r} is not the current key of an active agent"
        if self._facts is not None:
            trust = self._facts(record.agent_id).get("trust", 0)
            if not isinstance(trust, int) or trust < self._min:
                return f"agent {record.agent_id!r} trust {trust} is below {self._min}"
        return None


def unsafe_admit_any(did: str) -> str | None:
    """Admits every DID that proved its key: no registry, no trust. Tests and demos only."""
    return None


class PeerCache:
    """Admitted peers; an entry counts only within ``ttl_s`` and while ``admit`` still passes."""

    def __init__(self, admit: Admit, *, ttl_s: float = 300.0,
                 monotonic: Callable[[], float] = time.monotonic):
        self._admit = admit
        self._ttl = ttl_s
        self._monotonic = monotonic
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, did: str) -> None:
        with self._lock:
            self._until[did] = self._monotonic() + self._ttl

    def trusted(self, did: str) -> bool:
        with self._lock:
            until = self._until.get(did)
            if until is None:
                return False
            if self._monotonic() >= until or self._admit(did) is not None:
                del self._until[did]
                return False
            return True


class HandshakeServer:
    """Answers handshakes for ``identity`` on ``host:port`` (``port=0``: any free port)."""

    def __init__(self, identity: Identity, *, admit: Admit, host: str = "127.0.0.1",
                 port: int = 0, cache: PeerCache | None = None, challenge_ttl_s: float = 30.0):
        self.identity = identity
        self.admit = admit
        self.peers = cache if cache is not None else PeerCache(admit)
        self._pending: dict[str, tuple[str, float]] = {}
        self._ttl = challenge_ttl_s
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                status, reply = server._handle(self.path, self._body())
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                try:
                    size = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    return None
                if not 0 < size <= 16384:
                    return None
                try:
                    return json.loads(self.rfile.read(size))
                except ValueError:
                    return None

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HandshakeServer:
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _handle(self, path: str, msg: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(msg, dict) or not isinstance(msg.get("from"), str):
            return 400, {"error": "malformed"}
        peer, now = msg["from"], time.monotonic()
        if path == "/bastion/handshake/hello" and isinstance(msg.get("challenge"), str):
            c2 = b64e(secrets.token_bytes(32))
            with self._lock:  # step 2: kept by the (unguessable) challenge, never by the
                # claimed DID, so a stranger's hello cannot replace a peer's pending challenge;
                # a flood evicts the oldest entries instead of refusing everyone
                self._pending = {k: v for k, v in self._pending.items() if v[1] > now}
                while len(self._pending) >= _MAX_PENDING:
                    self._pending.pop(next(iter(self._pending)))
                self._pending[c2] = (peer, now + self._ttl)
            return 200, {"from": self.identity.did, "challenge": c2,
                         "proof": prove(self.identity, msg["challenge"], peer, "server")}
        if path == "/bastion/handshake/confirm":
            challenge = msg.get("challenge")
            if not isinstance(challenge, str):
                return 403, {"error": "no pending challenge for this peer"}
            with self._lock:  # step 4: the challenge is single use
                pending = self._pending.pop(challenge, None)
            if pending is None or pending[1] <= now or pending[0] != peer:
                return 403, {"error": "no pending challenge for this peer"}
            try:
                check_proof(peer, challenge, self.identity.did, msg.get("proof"))
            except HandshakeError as exc:
                return 403, {"error": str(exc)}
            refusal = self.admit(peer)
            if refusal is not None:
                return 403, {"error": f"not admitted: {refusal}"}
            self.peers.add(peer)
            return 200, {"ok": True}
        return 404, {"error": "unknown path"}


def _post(url: str, msg: dict[str, Any], timeout: float) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(msg).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise HandshakeError("malformed", f"{url}: {exc}") from None


def handshake(identity: Identity, base_url: str, *, admit: Admit, cache: PeerCache | None = None,
              expect: str | None = None, timeout: float = 5.0) -> str:
    """Run steps 1-4 as the client; return the server's DID once both sides are proven and
    admitted. ``HandshakeError`` says which step failed."""
    if not base_url.startswith(("http://", "https://")):
        raise HandshakeError("malformed", f"{base_url!r} is not an http(s) url")
    c1 = b64e(secrets.token_bytes(32))
    status, reply = _post(base_url + "/bastion/handshake/hello",
                          {"from": identity.did, "challenge": c1}, timeout)
    if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("from"), str) \
            or not isinstance(reply.get("challenge"), str):
        raise HandshakeError("malformed", f"hello refused ({status}): {reply}")
    server_did = reply["from"]
    if expect is not None and server_did != expect:
        raise HandshakeError("unknown_key", f"peer is {server_did!r}, expected {expect!r}")
    check_proof(server_did, c1, identity.did, reply.get("proof"), "server")  # step 3
    refusal = admit(server_did)
    if refusal is not None:
        raise HandshakeError("trust", f"peer not admitted: {refusal}")
    status, done = _post(base_url + "/bastion/handshake/confirm",  # step 4
                         {"from": identity.did, "challenge": reply["challenge"],
                          "proof": prove(identity, reply["challenge"], server_did)}, timeout)
    if status != 200 or not isinstance(done, dict) or done.get("ok") is not True:
        raise HandshakeError("trust", f"peer refused our proof ({status}): {done}")
    if cache is not None:
        cache.add(server_did)
    return str(server_did)

"""A handshake peer run in its own process by test_mesh_handshake.py.

Usage: python mesh_peer.py SEED_BYTE [REFUSE_DID]. Prints ``READY <port> <did>`` and serves
until stdin closes.
"""

from __future__ import annotations

import sys

from bastion.mesh import HandshakeServer, Identity


def main() -> None:
    me = Identity.from_seed(bytes(31) + bytes([int(sys.argv[1])]))
    refuse = sys.argv[2] if len(sys.argv) > 2 else None
    server = HandshakeServer(me, admit=lambda did: "refused" if did == refuse else None).start()
    port = server.url.rsplit(":", 1)[1]
    print(f"READY {port} {me.did}", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()

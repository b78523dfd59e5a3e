#!/usr/bin/env python3
"""A loopback POP3 server holding N tiny messages with 40-character UIDs,
for bench/uidl-rss: it answers CAPA, USER, PASS, STAT, UIDL, LIST, RETR,
DELE, NOOP, RSET and QUIT, and after --cut-after RETRs it drops the
connection, so a first sync lists, plans and starts fetching without
downloading a million messages.

Usage: uidl-server.py N PORTFILE [--cut-after K]
Writes the port it listens on to PORTFILE, serves until killed.
"""

import hashlib
import os
import socket
import sys


def main():
    n = int(sys.argv[1])
    port_file = sys.argv[2]
    cut_after = None
    if "--cut-after" in sys.argv:
        cut_after = int(sys.argv[sys.argv.index("--cut-after") + 1])

    # SHA-1 hex: 40 octets, in no particular order (as real UIDs are).
    uids = [hashlib.sha1(b"msg%d" % i).hexdigest().encode() for i in range(1, n + 1)]
    body = b"Subject: bench\r\nFrom: a@example.org\r\n\r\nhello\r\n"
    uidl = b"".join(b"%d %s\r\n" % (i, u) for i, u in enumerate(uids, 1)) + b".\r\n"
    listing = b"".join(b"%d %d\r\n" % (i, len(body)) for i in range(1, n + 1)) + b".\r\n"
    retr = b"+OK %d octets\r\n" % len(body) + body + b".\r\n"

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)

    while True:
        conn, _ = srv.accept()
        try:
            serve(conn, n, uidl, listing, retr, cut_after)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            conn.close()


def serve(conn, n, uidl, listing, retr, cut_after):
    rf = conn.makefile("rb")
    out = []

    def send(data):
        out.append(data)

    def flush():
        conn.sendall(b"".join(out))
        out.clear()

    send(b"+OK bench POP3 ready\r\n")
    flush()
    retrs = 0
    while True:
        line = rf.readline(1024)
        if not line:
            return
        words = line.strip().split()
        cmd = words[0].upper() if words else b""
        if cmd == b"CAPA":
            send(b"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\nTOP\r\n.\r\n")
        elif cmd in (b"USER", b"PASS", b"NOOP", b"RSET", b"DELE"):
            send(b"+OK\r\n")
        elif cmd == b"STAT":
            send(b"+OK %d %d\r\n" % (n, n * (len(retr) - 20)))
        elif cmd == b"UIDL" and len(words) == 1:
            send(b"+OK\r\n")
            send(uidl)
        elif cmd == b"LIST" and len(words) == 1:
            send(b"+OK\r\n")
            send(listing)
        elif cmd == b"RETR":
            retrs += 1
            if cut_after is not None and retrs > cut_after:
                flush()
                return
            send(retr)
        elif cmd == b"QUIT":
            send(b"+OK bye\r\n")
            flush()
            return
        else:
            send(b"-ERR unsupported\r\n")
        flush()

if __name__ == "__main__":
    main()

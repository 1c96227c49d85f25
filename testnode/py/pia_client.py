#!/usr/bin/env python3
"""Test client for the simulated node: opens real TCP connections and reports, per
connection, what the socket layer saw (peer name, local name, errno) and what the
agent answered, when it started (`t`, Unix time) and how long it took (`ms`).
One JSON line per connection on stdout.

It never sends anything anywhere by itself: it runs inside a test-made network
namespace whose only routes lead to the simulated node.
"""
import argparse
import errno
import json
import os
import socket
import sys
import time


def one(args):
    rec = {"pid": os.getpid(), "t": time.time()}
    start = time.monotonic()
    try:
        return attempt(args, rec)
    finally:
        rec["ms"] = round((time.monotonic() - start) * 1000, 1)


def attempt(args, rec):
    fam = socket.AF_INET if args.family == "4" else socket.AF_INET6
    s = socket.socket(fam, socket.SOCK_STREAM)
    # PIA_TEST_TIME_SCALE (cargo xtask test-kernels, emulated guests) stretches
    # every wait of the tests.
    timeout = args.timeout * max(1.0, float(os.environ.get("PIA_TEST_TIME_SCALE") or 1))
    s.settimeout(timeout)
    try:
        if args.family == "mapped":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if args.bind_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("" if fam == socket.AF_INET else "::", args.bind_port))
        try:
            s.connect((args.addr, args.port))
        except OSError as e:
            rec["errno"] = errno.errorcode.get(e.errno, str(e.errno))
            return rec
        rec["peer"] = list(s.getpeername()[:2])
        rec["sock"] = list(s.getsockname()[:2])
        if args.connected_file:
            # Tell the test this connection is open, then wait for its go.
            open(args.connected_file, "w").close()
        if args.send_after:
            for _ in range(int(timeout * 100)):
                if os.path.exists(args.send_after):
                    break
                time.sleep(0.01)
            else:
                rec["errno"] = "ETIMEDOUT waiting for " + args.send_after
                return rec
        if args.no_http:
            return rec
        req = (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n"
            f"Accept: application/json\r\nConnection: close\r\n"
        )
        token = read_token(args)
        if token:
            req += f"Authorization: {token}\r\n"
        try:
            s.sendall((req + "\r\n").encode())
        except OSError as e:
            rec["send_errno"] = errno.errorcode.get(e.errno, str(e.errno))
            return rec
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError as e:
                rec["recv_errno"] = errno.errorcode.get(e.errno, str(e.errno))
                break
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        rec["status"] = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        rec["body"] = body.decode(errors="replace")
        return rec
    finally:
        s.close()


def read_token(args):
    """The token to send: --token, or the --token-file read now (as SDKs do)."""
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    return args.token


def read_response(f):
    """One HTTP/1.1 response (Content-Length framed) from the file `f`:
    (status, headers dict, body) or None when the connection closed first."""
    status_line = f.readline()
    if not status_line:
        return None
    parts = status_line.decode(errors="replace").split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode(errors="replace").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0") or 0))
    return status, headers, body


def keep_alive(args):
    """--count requests on one persistent connection, one JSON line per request
    (`req` numbers them, `conn` is the same for all)."""
    fam = socket.AF_INET if args.family == "4" else socket.AF_INET6
    timeout = args.timeout * max(1.0, float(os.environ.get("PIA_TEST_TIME_SCALE") or 1))
    conn_t = time.time()
    s = socket.create_connection((args.addr, args.port), timeout=timeout) if fam == socket.AF_INET \
        else socket.create_connection((args.addr, args.port, 0, 0), timeout=timeout)
    try:
        f = s.makefile("rb")
        for n in range(max(1, min(args.count, 10000))):
            rec = {"pid": os.getpid(), "t": time.time(), "conn": conn_t, "req": n}
            start = time.monotonic()
            req = (
                f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n"
                f"Accept: application/json\r\n"
            )
            token = read_token(args)
            if token:
                req += f"Authorization: {token}\r\n"
            try:
                s.sendall((req + "\r\n").encode())
                got = read_response(f)
            except OSError as e:
                rec["errno"] = errno.errorcode.get(e.errno, str(e.errno))
                got = None
            rec["ms"] = round((time.monotonic() - start) * 1000, 1)
            if got is None:
                rec.setdefault("errno", "closed")
                print(json.dumps(rec), flush=True)
                return
            rec["status"], headers, body = got
            rec["body"] = body.decode(errors="replace")
            print(json.dumps(rec), flush=True)
            if headers.get("connection", "").lower() == "close":
                return
            if args.interval:
                time.sleep(args.interval)
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", default="169.254.170.23")
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--family", choices=["4", "6", "mapped"], default="4")
    p.add_argument("--path", default="/v1/whoami")
    p.add_argument("--host", default=None, help="Host header (default: the address)")
    p.add_argument("--token", default=None)
    p.add_argument("--token-file", default=None,
                   help="send this file's content as the token, read for every request")
    p.add_argument("--keep-alive", action="store_true",
                   help="send --count requests on one persistent connection")
    p.add_argument("--bind-port", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--seconds", type=float, default=0,
                   help="repeat for this long instead of --count times (at most 120 s)")
    p.add_argument("--until-file", default=None,
                   help="with --seconds: stop early once this file exists")
    p.add_argument("--interval", type=float, default=0, help="pause between connections")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--no-http", action="store_true")
    p.add_argument("--connected-file", default=None, help="create this file once connected")
    p.add_argument("--send-after", default=None, help="send the request only once this file exists")
    args = p.parse_args()
    if args.host is None:
        args.host = f"[{args.addr}]" if ":" in args.addr else args.addr
        if args.family == "mapped" and args.addr.startswith("::ffff:"):
            args.host = args.addr[len("::ffff:"):]
    if args.keep_alive:
        return keep_alive(args)
    if args.seconds > 0:
        end = time.monotonic() + min(args.seconds, 120.0)
        while time.monotonic() < end:
            if args.until_file and os.path.exists(args.until_file):
                break
            print(json.dumps(one(args)), flush=True)
            time.sleep(args.interval)
        return 0
    for i in range(max(1, min(args.count, 100000))):
        if i and args.interval:
            time.sleep(args.interval)
        print(json.dumps(one(args)), flush=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Hostile client for the simulated node: raw bytes over TCP, to see how a
listener answers input no SDK sends. One JSON line per case (or per flood) on
stdout.

Modes:
  cases      each named case on its own connection: what came back (status line,
             bytes), whether the server closed, how long it took;
  slowloris  N connections trickling a request head one byte a second: when the
             server closed each;
  idle       N connections that send nothing: how many the server closed at once,
             how many it held, until when; prints {"peak": ...} once all are
             open so the test can measure the server then.

Everything is bounded in count and time and stops by itself. It runs inside a
test-made network namespace whose only routes lead to the simulated node.
"""
import argparse
import json
import os
import re
import select
import socket
import sys
import threading
import time

SCALE = max(1.0, float(os.environ.get("PIA_TEST_TIME_SCALE") or 1))


def connect(args):
    fam = socket.AF_INET6 if args.family == "6" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5 * SCALE)
    s.connect((args.addr, args.port))
    return s


def head(host, path="/v1/credentials", method="GET", extra=b""):
    return (
        method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
        + b"\r\n" + extra + b"\r\n"
    )


def cases(args):
    """name -> bytes to send (or a callable doing the sending)."""
    h = args.host
    p = args.path
    big = b"a" * (1 << 20)
    return {
        "garbage": b"\x00\x01\x02 this is not http \xff\r\n\r\n",
        "bad_version": b"GET " + p.encode() + b" HTTP/9.9\r\nHost: " + h.encode() + b"\r\n\r\n",
        "no_version": b"GET " + p.encode() + b"\r\n\r\n",
        "oversized_request_line": b"GET /" + big + b" HTTP/1.1\r\nHost: " + h.encode() + b"\r\n\r\n",
        "oversized_header": head(h, p, extra=b"X-Big: " + big + b"\r\n"),
        "many_headers": head(h, p, extra=b"".join(b"X-H%d: v\r\n" % i for i in range(500))),
        "huge_authorization": head(h, p, extra=b"Authorization: " + big + b"\r\n"),
        "large_authorization": head(h, p, extra=b"Authorization: " + b"A" * 60000 + b"\r\n"),
        "unknown_method_unknown_path": head(h, "/no/such/path", method="BREW"),
        "unknown_path": head(h, "/../../etc/passwd"),
        "connect_method": b"CONNECT 169.254.170.23:443 HTTP/1.1\r\nHost: 169.254.170.23:443\r\n\r\n",
        "absolute_uri_other_host": b"GET http://evil.example" + p.encode() + b" HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        "spoofed_host": head("evil.example", p),
        "no_host": b"GET " + p.encode() + b" HTTP/1.1\r\n\r\n",
        "two_hosts": b"GET " + p.encode() + b" HTTP/1.1\r\nHost: " + h.encode() + b"\r\nHost: evil.example\r\n\r\n",
        "body_on_get": head(h, "/no/such/path", extra=b"Content-Length: 11\r\n") + b"hello world",
        "huge_content_length": head(h, "/no/such/path", method="POST", extra=b"Content-Length: 99999999999\r\n"),
        "bad_content_length": head(h, p, extra=b"Content-Length: -1\r\n"),
        "smuggling_cl_te": head(h, p, method="POST", extra=b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
        "bad_chunked": head(h, "/no/such/path", method="POST", extra=b"Transfer-Encoding: chunked\r\n") + b"zz\r\n",
        "obs_fold_header": head(h, p, extra=b"X-A: a\r\n folded\r\n"),
        "header_without_colon": head(h, p, extra=b"NoColonHere\r\n"),
        "nul_in_header": head(h, p, extra=b"X-A: a\x00b\r\n"),
        "invalid_utf8_path": b"GET /v1/\xff\xfe\xc3\x28 HTTP/1.1\r\nHost: " + h.encode() + b"\r\n\r\n",
        "invalid_utf8_header": head(h, p, extra=b"X-A: \xff\xfe\xc3\x28\r\n"),
        "invalid_utf8_authorization": head(h, p, extra=b"Authorization: \xff\xfe\xc3\x28\r\n"),
        "http2_prior_knowledge": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        "tls_client_hello": bytes.fromhex(
            "160301006e0100006a0303" + "00" * 32 + "00" + "0004130113020100"
            + "003d000000110000000e6576696c2e6578616d706c65000a00040002001d"
            + "000d000400020403002b0003020304003300260024001d0020" + "11" * 32
        ),
        "empty_then_close": b"",
        "crlf_flood": b"\r\n" * 100000,
    }


def read_answer(s, deadline):
    """Read until the server closes, or a whole response (head and
    content-length body) is in, or the deadline: (bytes, closed, reset)."""
    data = b""
    while time.time() < deadline:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, True, True
        if not chunk:
            return data, True, False
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            length = 0
            for line in data[:end].split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip() or 0)
            if len(data) >= end + 4 + length:
                # A whole response: does the server close after it?
                s.settimeout(0.3)
                try:
                    more = s.recv(1)
                    return data, not more, False
                except socket.timeout:
                    return data, False, False
                except ConnectionResetError:
                    return data, True, True
    return data, False, False


def send_all(s, payload):
    """Send in a thread (the server may answer, and close, before it read it all)."""
    err = []

    def run():
        try:
            s.sendall(payload)
        except OSError as e:
            err.append(type(e).__name__)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, err


def run_case(args, name, payload):
    t0 = time.time()
    rec = {"case": name}
    s = connect(args)
    sender, err = send_all(s, payload)
    data, closed, reset = read_answer(s, t0 + args.timeout * SCALE)
    sender.join(1)
    s.close()
    line = data.split(b"\r\n", 1)[0]
    rec["status_line"] = line.decode("latin-1")[:120]
    parts = line.split(b" ")
    rec["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    # Credentials served to the attacker pod: its key id is kept (the test
    # compares it), the secret and the session token never leave this process.
    body = data.partition(b"\r\n\r\n")[2].decode("latin-1")
    body = re.sub(r'"(SecretAccessKey|Token)":"[^"]*"', r'"\1":"(redacted)"', body)
    rec["body"] = body[:300]
    rec["closed"] = closed
    rec["reset"] = reset
    rec["send_error"] = err[0] if err else None
    rec["elapsed"] = round(time.time() - t0, 3)
    return rec


def pipeline(args):
    """N requests in one write; count the answers."""
    t0 = time.time()
    n = args.count
    req = head(args.host, "/no/such/path")
    s = connect(args)
    sender, err = send_all(s, req * n)
    data = b""
    statuses = {}
    answers = 0
    deadline = t0 + args.timeout * SCALE
    closed = False
    while time.time() < deadline and answers < n:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = s.recv(1 << 16)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            closed = True
            break
        data += chunk
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                break
            hd = data[:end].split(b"\r\n")
            length = 0
            for line in hd[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip() or 0)
            if len(data) < end + 4 + length:
                break
            code = hd[0].split(b" ")[1].decode()
            statuses[code] = statuses.get(code, 0) + 1
            answers += 1
            data = data[end + 4 + length:]
    sender.join(1)
    s.close()
    return {"case": "pipelining_flood", "sent": n, "answers": answers, "statuses": statuses,
            "closed": closed, "send_error": err[0] if err else None,
            "elapsed": round(time.time() - t0, 3)}


def slowloris(args):
    """N connections, each sending one byte of a request head per second, until
    the server closes it or `timeout` passes."""
    t0 = time.time()
    req = head(args.host, args.path)
    socks = []
    for _ in range(args.count):
        s = connect(args)
        s.setblocking(False)
        socks.append(s)
    closed_at = {}
    i = 0
    while time.time() < t0 + args.timeout * SCALE and len(closed_at) < len(socks):
        for k, s in enumerate(socks):
            if k in closed_at:
                continue
            try:
                if i < len(req) - 2:
                    s.send(req[i:i + 1])
                r, _, _ = select.select([s], [], [], 0)
                if r and not s.recv(4096):
                    closed_at[k] = time.time() - t0
            except OSError:
                closed_at[k] = time.time() - t0
        i += 1
        time.sleep(1)
    for s in socks:
        s.close()
    times = sorted(closed_at.values())
    return {"case": "slowloris", "count": len(socks), "closed": len(times),
            "first_closed": round(times[0], 3) if times else None,
            "last_closed": round(times[-1], 3) if times else None,
            "elapsed": round(time.time() - t0, 3)}


def idle(args):
    """N connections that send nothing, held until the server closes them or
    `hold` seconds pass; `all_closed_after_open`: seconds from the last connect
    until the server had closed them all."""
    t0 = time.time()
    socks, failed = [], 0
    for _ in range(args.count):
        try:
            socks.append(connect(args))
        except OSError:
            failed += 1
    for s in socks:
        s.setblocking(False)
    opened = time.time() - t0

    def open_now():
        n = 0
        for s in socks:
            if s.fileno() < 0:
                continue
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    s.close()
                    continue
            except BlockingIOError:
                n += 1
                continue
            except OSError:
                s.close()
                continue
            n += 1
        return n

    time.sleep(1)
    held = open_now()
    print(json.dumps({"peak": True, "connected": len(socks), "connect_failed": failed,
                      "held_after_1s": held}), flush=True)
    # Times from the end of the connect phase: the server may have accepted the
    # connections it holds as late as that.
    t_open = t0 + opened
    history = []
    while time.time() < t0 + args.hold * SCALE:
        time.sleep(0.5)
        n = open_now()
        history.append((round(time.time() - t_open, 1), n))
        if n == 0:
            break
    for s in socks:
        s.close()
    return {"case": "idle", "count": args.count, "connected": len(socks),
            "connect_failed": failed, "open_seconds": round(opened, 3),
            "held_after_1s": held, "held_at_end": history[-1][1] if history else held,
            "all_closed_after_open": history[-1][0] if history and history[-1][1] == 0 else None,
            "elapsed": round(time.time() - t0, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--family", default="4")
    ap.add_argument("--host", default="169.254.170.23")
    ap.add_argument("--path", default="/v1/credentials")
    ap.add_argument("--mode", default="cases",
                    choices=["cases", "pipeline", "slowloris", "idle"])
    ap.add_argument("--cases", default="all")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--hold", type=float, default=10)
    args = ap.parse_args()
    assert args.count <= 5000 and args.timeout <= 120 and args.hold <= 120, "bounded"
    if args.mode == "cases":
        table = cases(args)
        names = list(table) if args.cases == "all" else args.cases.split(",")
        for name in names:
            print(json.dumps(run_case(args, name, table[name])), flush=True)
    elif args.mode == "pipeline":
        print(json.dumps(pipeline(args)), flush=True)
    elif args.mode == "slowloris":
        print(json.dumps(slowloris(args)), flush=True)
    else:
        print(json.dumps(idle(args)), flush=True)


if __name__ == "__main__":
    sys.exit(main())

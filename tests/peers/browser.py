#!/usr/bin/env python3
"""Headless Chromium driven over the DevTools protocol on a pipe (stdlib only).

    browser.py [--chromium chromium]

Starts `chromium --headless --remote-debugging-pipe` (with --no-sandbox when run as root, as in
a container) and announces `READY version=<browser version>`. The protocol runs on the child's
fds 3 (commands in) and 4 (replies out), NUL-terminated JSON messages, so no port is needed.

Control lines on stdin, each acknowledged with `OK <line>` (`ERR <reason>` if it failed):
    open URL            open URL in a new tab (later commands act on it)
    eval EXPRESSION     evaluate in the tab; prints `RESULT <json value>`
    screenshot PATH     save a PNG of the tab
Stdin EOF or SIGTERM ends the browser and the process.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile


class Browser:
    def __init__(self, binary: str, profile: str):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        args = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--window-size=1000,900",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")
        # The shell puts the pipe ends on fds 3 and 4, where chromium looks for them.
        self.proc = subprocess.Popen(
            ["sh", "-c", f'exec "$@" 3<&{to_child_r} 4>&{from_child_w}', "sh", *args],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sys.stderr,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.buf = b""
        self.next_id = 0
        self.session = None

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def read(self) -> dict:
        while b"\0" not in self.buf:
            chunk = os.read(self.from_child, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]

    def eval(self, expression: str):
        r = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            self.session,
        )
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("text", "exception"))
        return r.get("result", {}).get("value")

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chromium", default="chromium")
    a = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="browser-peer-")
    browser = Browser(a.chromium, profile)
    signal.signal(signal.SIGTERM, lambda *_: (browser.close(), shutil.rmtree(profile, True), sys.exit(0)))
    try:
        version = browser.call("Browser.getVersion")["product"]
        print(f"READY version={version}", flush=True)
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd, _, arg = line.partition(" ")
            try:
                if cmd == "open":
                    browser.open(arg)
                elif cmd == "eval":
                    print("RESULT " + json.dumps(browser.eval(arg)), flush=True)
                elif cmd == "screenshot":
                    browser.screenshot(arg)
                else:
                    raise RuntimeError(f"unknown command {cmd!r}")
                print(f"OK {line}", flush=True)
            except Exception as e:  # reported to the test, which fails with it
                print(f"ERR {e}", flush=True)
    finally:
        browser.close()
        shutil.rmtree(profile, True)


if __name__ == "__main__":
    main()

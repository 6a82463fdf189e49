"""The benchmark server serves the same bytes as the fault server for normal images."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.synthweb.site import Site, SiteSpec

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_static_server_serves_normal_images_with_keep_alive() -> None:
    port = _free_port()
    spec = SiteSpec(seed=4, n_images=6, n_hosts=2, n_pages=1)
    site = Site(spec)
    cmd = [sys.executable, "-m", "pipeline.synthweb", "serve", "--static", "--port", str(port),
           "--images", "6", "--hosts", "2", "--seed", "4", "--pages", "1"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    )
    try:
        assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}"
        normal = site.by_fault(None)
        conns = {
            h: http.client.HTTPConnection(site.addresses[h], port, timeout=10) for h in range(2)
        }
        for entry in normal:  # several requests per connection
            conn = conns[entry.host_index]
            conn.request("GET", entry.path)
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Content-Type") == site.content_type(entry)
            assert resp.read() == site.payload(entry)
        faulty = site.fault_entry("not_found")
        conn = conns[faulty.host_index]
        conn.request("GET", faulty.path, headers={"Connection": "close"})
        assert conn.getresponse().status == 404
        for c in conns.values():
            c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

"""Command line of the emulator: build the synthetic archive, serve it on one
port until SIGINT/SIGTERM, exit 0.

The first stdout line is exactly "terrafs emulator: http://HOST:PORT" (the
test harness reads it to learn the port); it is printed only once the socket
listens. It also writes a ready terrafs config for itself (CONFIG_NAME in the
data folder, 0600: it holds the demo password) and names it on stdout. This
module parses arguments and runs the server (the app wrapped in the link
profile of link.py); it holds no service logic (that is app.py and its
handlers).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from werkzeug.serving import make_server

from terrafs.emulator.app import make_app
from terrafs.emulator.data import PROFILES, build_archive
from terrafs.emulator.keycloak import REALM_PATH
from terrafs.emulator.limits import parse_rate_limits
from terrafs.emulator.link import KeepAliveHandler, Link, LinkProfile, parse_link
from terrafs.emulator.settings import FAULT_KINDS, EmulatorSettings

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("~/.cache/terrafs-emulator")
CONFIG_NAME = "terrafs-config.yaml"


def write_client_config(data_dir: Path, base: str) -> Path:
    """A terrafs config for this emulator: its endpoints, the demo account, and a cache,
    rate-limit state and log of its own in data_dir (so the real service's budget is untouched)."""
    client = data_dir / "client"
    path = data_dir / CONFIG_NAME
    text = (f"# terrafs config for the emulator at {base} (written by terrafs emulator at each start)\n"
            f"catalogue: stac\n"
            f"endpoints:\n  stac: {base}/stac/\n  opensearch: {base}/catalogue/\n"
            f"  token: {base}{REALM_PATH}/protocol/openid-connect/token\n"
            f"auth: {{username: demo, password: demo, hosts: [\"{base}\"]}}\n"
            f"cache: {{dir: {client}/cache, size: 2GiB}}\n"
            f"rate_limit_state: {client}/ratelimit.state\n"
            f"log: {{file: {client}/terrafs.log}}\n")
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".terrafs-config-")  # 0600; emulators may share data_dir
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _nonneg(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _limits(text: str) -> list[tuple[int, float]]:
    try:
        return parse_rate_limits(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _link(text: str) -> Link:
    try:
        return parse_link(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="terrafs emulator",
                                description="Serve an emulated Terrascope (STAC, OpenSearch, download, SSO) locally.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free port)")
    p.add_argument("--data", type=Path, default=None, help=f"archive directory (default {DEFAULT_DATA})")
    p.add_argument("--profile", choices=PROFILES, default="small",
                   help="archive size: small (tests), large (full-size Sentinel-2 bands), "
                        "bench (large plus 4096 x 4096 raster layouts, 40 files each), "
                        "archive (small, with S2 TOC at the real archive's size: ~100 products a day, "
                        "2020-01..2020-03, bytes made on demand)")
    p.add_argument("--bulk", type=int, default=0, metavar="N", help="extra generated bulk products")
    p.add_argument("--log", type=Path, default=None, help="request log, JSON lines (default <data>/requests.jsonl)")
    p.add_argument("--access-token-lifetime", type=_nonneg, default=300.0, metavar="S")
    p.add_argument("--refresh-token-lifetime", type=_nonneg, default=3600.0, metavar="S")
    p.add_argument("--rate-limit", type=_limits, default=[(80, 10.0), (200, 60.0)], metavar="N/S,...",
                   help='download limits per client IP, e.g. "80/10,200/60" (default) or "off"')
    p.add_argument("--error-rate", type=_rate, default=0.0, help="share of downloads answered 500/503")
    p.add_argument("--drop-rate", type=_rate, default=0.0, help="share of download GETs cut mid-body")
    p.add_argument("--latency", type=_nonneg, default=0.0, metavar="S", help="seconds added per request")
    p.add_argument("--bandwidth", type=_nonneg, default=0.0, metavar="BYTES_PER_S",
                   help="cap per download response (0 = none)")
    p.add_argument("--link", type=_link, default=Link(), metavar="rtt=T,bw=R",
                   help='link profile, e.g. "rtt=30ms,bw=5MB/s": a round trip per request (two more per new '
                        'connection) and each answer paced to bw; ",shared": bw is the client\'s as a whole, '
                        'not each answer\'s (default: loopback, no delay)')
    p.add_argument("--ignore-range", action="store_true", help="answer Range requests with 200 + whole body")
    p.add_argument("--no-retry-after", action="store_true", help="send 429 without Retry-After")
    p.add_argument("--no-stac-fields", action="store_true",
                   help="serve a STAC API without the fields extension (no item-search#fields conformance, "
                        "`fields` ignored)")
    p.add_argument("--fault-rate", type=_rate, default=0.0,
                   help="share of download GETs given a fault of a kind drawn from --fault-kinds")
    p.add_argument("--fault-kinds", default=",".join(FAULT_KINDS), metavar="K,...",
                   help=f"kinds for --fault-rate (default all: {','.join(FAULT_KINDS)})")
    return p


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    return EmulatorSettings(
        access_token_lifetime=args.access_token_lifetime,
        refresh_token_lifetime=args.refresh_token_lifetime,
        rate_limits=list(args.rate_limit),
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        latency=args.latency,
        bandwidth=args.bandwidth,
        link_rtt=args.link.rtt,
        link_bandwidth=args.link.bandwidth,
        link_shared=args.link.shared,
        ignore_range=args.ignore_range,
        send_retry_after=not args.no_retry_after,
        fault_rate=args.fault_rate,
        fault_kinds=[k.strip() for k in args.fault_kinds.split(",") if k.strip()],
        stac_fields=not args.no_stac_fields,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        EmulatorSettings().update({"fault_kinds": [k.strip() for k in args.fault_kinds.split(",") if k.strip()]})
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=os.environ.get("TERRAFS_EMULATOR_LOGLEVEL", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # werkzeug logs every request at INFO; our JSON request log replaces that.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    data_dir = (args.data or DEFAULT_DATA).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = build_archive(data_dir, profile=args.profile, bulk_products=args.bulk)
    log_path = args.log or data_dir / "requests.jsonl"
    app = make_app(archive, settings_from_args(args), log_path)
    server = make_server(args.host, args.port, LinkProfile(app, app.settings), threaded=True,
                         request_handler=KeepAliveHandler)
    server.daemon_threads = True  # a stuck client must not block the exit

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    host = args.host if ":" not in args.host else f"[{args.host}]"
    base = f"http://{host}:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, name="emulator-http", daemon=True)
    thread.start()
    print(f"terrafs emulator: {base}", flush=True)
    print(f"STAC API: {base}/stac", flush=True)
    print(f"OpenSearch: {base}/catalogue/", flush=True)
    print(f"Token URL: {base}{REALM_PATH}/protocol/openid-connect/token", flush=True)
    print("user demo, password demo", flush=True)
    print(f"request log: {log_path}", flush=True)
    try:
        config = write_client_config(data_dir, base)
        print(f"terrafs config: {config}   (terrafs mount --config {config} MOUNTPOINT)", flush=True)
    except OSError as exc:
        print(f"terrafs config: not written ({exc.strerror})", flush=True)
    try:
        while not stop.wait(0.5):
            if not thread.is_alive():
                log.error("the HTTP server thread stopped unexpectedly")
                return 1
    finally:
        server.shutdown()
        server.server_close()
        app.log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

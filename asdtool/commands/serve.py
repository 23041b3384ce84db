"""`asdtool serve`: serve a detector bundle over HTTP (POST /score, GET /health, GET /info)."""

from __future__ import annotations

import socket

from rich.console import Console
from rich.table import Table

from asdtool.config.stages import ServeConfig
from asdtool.core.errors import AsdError

SHUTDOWN_SECONDS = 10  # how long a stopping service waits for the requests still open


def check_address(host: str, port: int) -> None:
    """Refuse an address this process cannot listen on (in use, not an address of this machine) before loading anything."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AsdError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            sock.bind(address)
    except OSError as exc:
        raise AsdError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def url_of(host: str, port: int) -> str:
    """Return the base URL the service answers at (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(cfg: ServeConfig) -> None:
    """Load the bundle once, check --log, print what is served, then serve until interrupted."""
    import torch
    import uvicorn

    from asdtool.deploy.load import load_bundle, read_bundle_meta
    from asdtool.deploy.scorelog import check_log
    from asdtool.deploy.serve import make_app

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    read_bundle_meta(cfg.bundle)  # a missing or foreign file fails first, and fast
    check_address(cfg.host, cfg.port)
    bundle = load_bundle(cfg.bundle, cfg.device, verify_key=cfg.verify_key)
    if cfg.log is not None:
        check_log(cfg.log, bundle)
    app = make_app(bundle, max_bytes=cfg.max_bytes, batch_size=cfg.batch_size, max_wait_ms=cfg.max_wait_ms,
                   hop=cfg.hop, aggregate=cfg.aggregate, log=cfg.log, max_seconds=cfg.max_seconds)  # fmt: skip
    url = url_of(cfg.host, cfg.port)
    table = Table(title=f"serve: {cfg.bundle.name} ({bundle.meta['kind']}, {bundle.seconds:g} s windows) at {url}",
                  title_justify="left")  # fmt: skip
    for col in ("machine", "sections", "thresholds"):
        table.add_column(col, justify="left" if col == "machine" else "right")
    for machine, sections in bundle.machines.items():
        table.add_row(machine, ", ".join(sections), ", ".join(f"{bundle.thresholds[(machine, s)]:.4g}" for s in sections))
    table.caption = (f"POST {url}/score (multipart field 'file', or raw bytes with ?machine=&section=); GET /health, /info; "
                     f"{cfg.aggregate} over windows, batches of {cfg.batch_size}, device {bundle.device}"
                     + (f"; logging to {cfg.log}" if cfg.log is not None else "") + "; Ctrl+C stops")  # fmt: skip
    Console().print(table)
    # SIGINT/SIGTERM: uvicorn stops accepting, gives open requests SHUTDOWN_SECONDS, then the worker ends
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_SECONDS)

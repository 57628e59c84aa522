"""`tbps serve`: the HTTP search service and web page of an index."""

from __future__ import annotations

import socket

from omegaconf import DictConfig

from tbps.errors import ConfigError
from tbps.inference.retriever import Retriever


def check_port(host: str, port: int) -> None:
    """A clear error, before loading anything, when ``host:port`` cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"host={host}: not an address of this machine ({e})") from e
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({e.strerror}); choose another port="
            ) from e


def run_serve(cfg: DictConfig) -> None:
    """Load the index and its model, then serve until Ctrl+C."""
    from tbps.inference.service import serve

    check_port(cfg.host, cfg.port)
    retriever = Retriever.from_index(cfg.index, model=cfg.model, device=cfg.device)
    print(
        f"tbps search: http://{cfg.host}:{cfg.port}/ ({len(retriever)} images; Ctrl+C to stop)",
        flush=True,
    )
    serve(retriever, host=cfg.host, port=cfg.port, max_k=cfg.max_k)

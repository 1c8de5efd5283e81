"""`pagelens serve milvus`: the store's own Milvus Lite folder served as a Milvus gRPC server.

Milvus Lite lets one process open a store; the milvus-lite package also runs the same engine as a server
(`milvus-lite server`), which any number of processes reach through PAGELENS_MILVUS_URI. Serving the store's own
folder means nothing moves: stop the server and the store opens in Milvus Lite again, with the same vectors.
"""

from __future__ import annotations

import signal
import socket
import sys

from pagelens.errors import BadInputError
from pagelens.tools.corpus.store import MILVUS_LITE_DIR, StoreSettings, hold_lock


def _check_port_free(host: str, port: int) -> None:
    # gRPC binds with SO_REUSEPORT, so a second server on a taken port would start and split the traffic.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BadInputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with --port.") \
                from None


def run_milvus_server(settings: StoreSettings, *, host: str, port: int) -> None:
    """Serve the store's vectors until interrupted (Ctrl-C or SIGTERM), holding the store's lock meanwhile."""
    from milvus_lite.cmdline import main as milvus_lite

    if settings.milvus_uri is not None:
        raise BadInputError(f"PAGELENS_MILVUS_URI is set ({settings.milvus_uri}), so this store's vectors are "
                            f"already in a Milvus server; unset it to serve the store's own Milvus Lite folder.")
    if not 0 < port < 65536:
        raise BadInputError(f"--port {port} is not a TCP port; give one from 1 to 65535.")
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    _check_port_free(host, port)
    # Milvus Lite processes would open the same folder: the lock makes them say what holds it instead.
    lock = hold_lock(home, "pagelens serve milvus")
    try:
        reachable = socket.gethostname() if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        print(f"Serving the vectors of the store {home}; in every process that shares it, set:\n"
              f"export PAGELENS_HOME={home}\n"
              f"export PAGELENS_MILVUS_URI=http://{reachable}:{port}", flush=True)
        # SIGTERM stops it as Ctrl-C does: the server finishes its calls in flight and closes the data cleanly.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        milvus_lite(["server", "--data-dir", str(home / MILVUS_LITE_DIR), "--host", host, "--port", str(port)])
    finally:
        sys.stdout.flush()
        lock.close()

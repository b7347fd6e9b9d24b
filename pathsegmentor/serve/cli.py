"""``pathsegmentor serve [PATHS...] [--root DIR] [--model NAME_OR_DIR] [--host 127.0.0.1] [--port N] [--open]``

Starts the local viewer (uvicorn) and prints its URL. Only the files given and the image files under
``--root`` can be opened; the first file given is open in the page at once. Binds to 127.0.0.1 unless
``--host`` says otherwise (then it warns: the viewer has no authentication). Exit codes: 0 stopped,
1 runtime failure (model), 2 bad usage.
"""
from __future__ import annotations

import argparse
import socket
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="tiles (PNG/JPEG/TIFF) or slides "
                        "(TIFF/SVS/OME-TIFF) to serve; the first opens in the page at once")
    parser.add_argument("--root", default=None, help="also serve the image files under this folder")
    parser.add_argument("--model", "-m", default=None, help="registered model name or model directory "
                        "(default: pathsegmentor-tiny)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 microns per pixel of the files "
                        "(when they do not record it, or to override)")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve until interrupted. Bad usage raises
    :class:`~pathsegmentor.cli.errors.UsageError` (exit 2), a model that cannot load
    :class:`~pathsegmentor.cli.errors.RunError` (exit 1); :func:`pathsegmentor.cli.main` prints them."""
    from ..cli.errors import RunError, UsageError
    from ..cli.loading import DEFAULT_MODEL, load_model
    from .files import FileRegistry, ServeError

    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise RunError(f"the viewer needs '{e.name}': pip install 'pathsegmentor[serve]'") from None
    if not args.paths and args.root is None:
        raise UsageError("nothing to serve: pass image/slide files, or --root FOLDER")
    if args.mpp is not None and not 0 < args.mpp < 100:
        raise UsageError(f"--mpp {args.mpp} is not a microns-per-pixel value (e.g. 0.25 for 40x, 0.5 for 20x)")
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port (0..65535; 0 picks a free one)")
    try:
        files = FileRegistry(args.paths, root=args.root)
    except ServeError as e:
        raise UsageError(e.message) from None
    from .._compat import ensure_torchvision

    ensure_torchvision()
    model, source = load_model(args.model or DEFAULT_MODEL, device=args.device)
    from .app import create_app

    app = create_app(model, files, mpp=args.mpp)
    port = args.port or free_port(args.host)
    url = f"http://{args.host}:{port}/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pathsegmentor serve: warning: listening on {args.host}: anyone who can reach it can read the "
              f"served files (there is no login)", file=sys.stderr)
    print(f"pathsegmentor viewer: {url}  (model {model.name} from {source}; "
          f"{len(files.list())} file(s); Ctrl+C stops)", flush=True)
    if args.open:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=args.host, port=port, log_level="warning")
    return 0

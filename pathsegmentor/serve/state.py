"""What the viewer's app holds between requests: the model, the files, open images, results (LRU) and
whole-slide jobs (:class:`ServerState`)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .cache import EmbeddingCache
from .files import FileRegistry, ServeError
from .jobs import JobManager
from .sources import OpenedImage, open_image
from .view import ViewResult


class ServerState:
    """What the app holds: the model, the files, open images, results (LRU) and jobs."""

    def __init__(self, model: Any, files: FileRegistry, *, mpp: float | None = None,
                 workdir: str | Path | None = None, max_results: int = 32) -> None:
        from ..inference.predictor import as_predictor

        self.model, self.files, self.mpp = model, files, mpp
        as_predictor(model).resolver  # the prompt resolver, built once for the server's life (the model's predictor)
        self.cache = EmbeddingCache(512 << 20)
        self.images: dict[str, OpenedImage] = {}
        self.results: OrderedDict[str, ViewResult] = OrderedDict()
        self.max_results = max_results
        self.jobs = JobManager(self._run_slide, workdir)
        self._lock = threading.Lock()
        self._n = 0

    def _next(self, prefix: str) -> str:
        with self._lock:
            self._n += 1
            return f"{prefix}{self._n}"

    def _run_slide(self, path: Path, prompts: list[str], out: Path, on_band) -> Any:
        from ..slide import segment_slide

        return segment_slide(self.model, path, prompts, out=out, mpp=self.mpp, geojson=True, progress=False,
                             on_band=on_band)

    def open(self, name: str) -> OpenedImage:
        file = self.files.resolve(name)
        for img in self.images.values():
            if img.file.path == file.path:
                return img
        img = open_image(file, self._next("i"), self.mpp)
        self.images[img.id] = img
        return img

    def image(self, image_id: Any) -> OpenedImage:
        img = self.images.get(str(image_id))
        if img is None:
            raise ServeError(404, f"image '{image_id}' is not open; open it first (POST /api/open with a file "
                                  f"from /api/files).")
        return img

    def result(self, result_id: str) -> ViewResult:
        res = self.results.get(result_id)
        if res is None:
            raise ServeError(404, f"result '{result_id}' is gone (the server keeps the last {self.max_results}); "
                                  f"segment the view again.")
        return res

    def keep(self, res: ViewResult) -> None:
        with self._lock:
            self.results[res.id] = res
            while len(self.results) > self.max_results:
                self.results.popitem(last=False)

    def model_info(self) -> dict:
        cfg = self.model.config
        return {"name": self.model.name, "mpp": cfg.preprocess.mpp, "input_size": cfg.preprocess.input_size}

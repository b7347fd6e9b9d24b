"""Whole-slide segmentation as background jobs: :func:`pathsegmentor.segment_slide` in a thread, with
progress (bands done / total), cancel (checked after each band) and the error of a crashed job kept
for the page while the server keeps serving. Outputs go to a folder per job: the pyramidal TIFF per
prompt (shown as an overlay layer), ``objects.csv``, the QuPath GeoJSON and ``summary.json``."""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .files import ServeError


class JobCancelled(Exception):
    """Raised inside a job's band callback when the page asked to cancel it."""


@dataclass
class Job:
    """A whole-slide run: ``state`` is ``queued``, ``running``, ``done``, ``cancelled`` or ``error``."""

    id: str
    image_id: str
    prompts: list[str]
    out: Path
    state: str = "queued"
    bands_done: int = 0
    bands_total: int | None = None
    error: str = ""
    traceback: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def files(self) -> dict[str, Path]:
        """Downloadable outputs by name (present once the job is done)."""
        if self.state != "done":
            return {}
        return {p.name: p for p in sorted(self.out.iterdir()) if p.is_file()}

    def masks(self) -> list[dict]:
        if self.result is None:
            return []
        return [{"index": i, "prompt": p, "file": path.name, "dzi": f"/api/jobs/{self.id}/overlay/{i}.dzi"}
                for i, (p, path) in enumerate(self.result.masks.items())]

    def to_dict(self) -> dict:
        summary = self.result.summary if self.result is not None else None
        return {"id": self.id, "image": self.image_id, "prompts": self.prompts, "state": self.state,
                "bands_done": self.bands_done, "bands_total": self.bands_total,
                "progress": (self.bands_done / self.bands_total) if self.bands_total else 0.0,
                "error": self.error, "elapsed_s": (self.finished or time.time()) - self.started,
                "files": [f"/api/jobs/{self.id}/files/{n}" for n in self.files()], "masks": self.masks(),
                "summary": summary}


class JobManager:
    """Background jobs, each :meth:`submit` in its own daemon thread.

    Args:
        run: ``run(path, prompts, out, on_band)`` -> a :class:`~pathsegmentor.slide.finalize.SlideResult`
            (the server passes ``segment_slide`` with its model).
        workdir: where job folders are made (default: a temporary folder removed at :meth:`close`).
    """

    def __init__(self, run: Callable[..., Any], workdir: str | Path | None = None) -> None:
        self._run = run
        self._own = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pathseg-serve-"))
        self.jobs: dict[str, Job] = {}
        self._n = 0
        self._lock = threading.Lock()

    def submit(self, image_id: str, path: Path, prompts: Sequence[str]) -> Job:
        """Start a job on ``path``; returns at once."""
        with self._lock:
            self._n += 1
            job = Job(f"j{self._n}", image_id, list(prompts), self.workdir / f"job-{self._n}")
            self.jobs[job.id] = job
        threading.Thread(target=self._work, args=(job, path), name=f"pathseg-{job.id}", daemon=True).start()
        return job

    def _work(self, job: Job, path: Path) -> None:
        job.state = "running"

        def on_band(_band: int, done: int) -> None:
            job.bands_done = done
            if job.bands_total is None:
                progress = job.out / ".partial" / "progress-rank0.json"
                try:
                    job.bands_total = int(json.loads(progress.read_text())["bands_total"])
                except (OSError, ValueError, KeyError):
                    pass
            if job.cancel.is_set():
                raise JobCancelled()

        try:
            job.result = self._run(path, job.prompts, job.out, on_band)
            job.bands_done = job.bands_total or job.bands_done
            job.state = "done"
        except JobCancelled:
            job.state = "cancelled"
            shutil.rmtree(job.out, ignore_errors=True)
        except Exception as e:  # noqa: BLE001 - a crashed job reports its error; the server keeps serving
            job.state, job.error = "error", f"{type(e).__name__}: {e}"
            job.traceback = traceback.format_exc()
        finally:
            job.finished = time.time()

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ServeError(404, f"no job '{job_id}'; jobs: {sorted(self.jobs) or 'none'}.")
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop after its current band (a finished job is left as it is)."""
        job = self.get(job_id)
        job.cancel.set()
        if job.state == "queued":
            job.state = "cancelled"
        return job

    def close(self) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)

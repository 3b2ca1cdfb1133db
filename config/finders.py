"""Static files from npm packages (node_modules, installed by `npm ci` in `make venv`): only the files the pages
load, each package under its own folder of /static/. A package's dist/ may hold far more (onnxruntime-web ~150 MB of
builds and source maps); listing just the needed files keeps collectstatic small and serves nothing unused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage, Warning
from django.core.files.storage import FileSystemStorage


class NpmFinder(BaseFinder):
    """Serves `files` of node_modules/<package>/<dist> under static/<prefix>/."""

    package: ClassVar[str]
    dist: ClassVar[str] = "dist"
    prefix: ClassVar[str]
    files: ClassVar[tuple[str, ...]]
    check_id: ClassVar[str]

    @classmethod
    def dist_dir(cls) -> Path:
        return Path(settings.BASE_DIR) / "node_modules" / cls.package / cls.dist

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        missing = [name for name in self.files if not (self.dist_dir() / name).is_file()]
        if not missing:
            return []
        message = f"{self.package} is not installed ({missing[0]} missing): run `npm ci` (make venv)"
        return [Warning(message, id=self.check_id)]

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        """A path (or [] when not found) by default, a list with find_all, as Django's own finders answer."""
        folder, _, name = path.partition("/")
        where = self.dist_dir() / name
        found = str(where) if folder == self.prefix and name in self.files and where.is_file() else None
        if find_all:
            return [found] if found else []
        return found or []

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        storage = FileSystemStorage(location=self.dist_dir())
        storage.prefix = self.prefix  # type: ignore[attr-defined]  # collectstatic copies the files under this folder
        for name in self.files:
            if (self.dist_dir() / name).is_file():
                yield name, storage


class OnnxRuntimeWebFinder(NpmFinder):
    """The provider tab's runtime. ort.wasm.min.mjs runs on WASM alone (CPU, SIMD, threads when cross-origin
    isolated) with its .mjs/.wasm pair; ort.webgpu.min.mjs adds WebGPU and loads the asyncify pair."""

    package = prefix = "onnxruntime-web"
    files = (
        "ort.wasm.min.mjs",
        "ort-wasm-simd-threaded.mjs",
        "ort-wasm-simd-threaded.wasm",
        "ort.webgpu.min.mjs",
        "ort-wasm-simd-threaded.asyncify.mjs",
        "ort-wasm-simd-threaded.asyncify.wasm",
    )
    check_id = "config.W001"


class UPlotFinder(NpmFinder):
    """The marketplace's charts (market/static/market/charts.js): uPlot's ES module and its style sheet."""

    package = prefix = "uplot"
    files = ("uPlot.esm.js", "uPlot.min.css")
    check_id = "config.W002"
